"""Keeps XLA's float32 arithmetic rounding as PyTorch's CPU kernels do, so IoUs and box coordinates are
bit-equal to torchvision's / mmdetection's and no threshold decision flips on an ulp.

Two XLA rewrites change results by an ulp: a product feeding an add becomes one fused multiply-add
(rounding once instead of twice: ~28% of random `c - a * b` differ), and a division by a broadcast
becomes a multiplication by the reciprocal (~25% differ; ~half by a constant). `rounded` and `divide`
stop them.
"""
import jax
import jax.numpy as jnp


def rounded(x: jax.Array) -> jax.Array:
  """`x` itself (NaN stays NaN) behind a select XLA/LLVM cannot see through: a product passed through
  it is rounded to float32 before the add that consumes it (no FMA contraction)."""
  return jnp.where(x == x, x, jnp.nan)  # pylint: disable=comparison-with-itself


def divide(numerator, denominator) -> jax.Array:
  """numerator / denominator as a true float32 division, also by a broadcast, a constant or under vmap.

  Guarding the denominator alone does not survive a constant (the select is folded) nor vmap (an
  unbatched denominator is broadcast outside the guard); selecting it on the numerator (NaN where the
  numerator is NaN: the quotient is NaN anyway) makes it an elementwise operand XLA cannot rewrite."""
  numerator = jnp.asarray(numerator)
  shape = jnp.broadcast_shapes(jnp.shape(numerator), jnp.shape(denominator))
  numerator = jnp.broadcast_to(numerator, shape)
  denominator = jnp.broadcast_to(jnp.asarray(denominator, numerator.dtype), shape)
  return numerator / jnp.where(numerator == numerator, denominator, jnp.nan)  # pylint: disable=comparison-with-itself
