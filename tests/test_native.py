"""The native CPU kernels' build and choice (hatnet_jax/models/native.py): on one CPU device the defaults take
every kernel (SiLU -> depthwise -> SiLU, softmax attention, GroupNorm); without them (HATNET_JAX_NATIVE=0, no compiler,
a failing build) they say why and XLA's paths run. Each case runs in a fresh one-device process."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
  full = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu', **env)
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=full, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


_HLO = """
    import jax, jax.numpy as jnp
    from hatnet_jax.models import attention, fused_attention, fused_depthwise, fused_group_norm, layers
    x = jnp.zeros((1, 8, 8, 16))
    modules = (('DepthwiseConv', layers.DepthwiseConv(3, silu_around=True), {}),  # impl 'auto'
               ('HMHSA', attention.HMHSA(16, 8, 4, 2, norm_impl='xla'), {'train': False}),  # attention_impl None
               ('GroupNorm', layers.group_norm(), {}))  # impl 'auto'
    for name, module, kw in modules:
      v = module.init(jax.random.key(0), x, **kw)
      text = jax.jit(jax.value_and_grad(lambda v, x: module.apply(v, x, **kw).sum())).lower(v, x).as_text()
      print(name, 'calls', *(text.count(f'hatnet_{kernel}_{way}') for kernel in
            ('silu_depthwise_silu', 'window_attention', 'global_attention', 'group_norm') for way in ('fwd', 'bwd')))
    print('usable', fused_depthwise.usable(x, 3), fused_attention.usable(x), fused_group_norm.usable(x),
          'reason', fused_depthwise.unavailable_reason(), fused_attention.unavailable_reason(),
          fused_group_norm.unavailable_reason())
    """


def test_defaults_take_the_kernels_on_one_cpu_device():
  out = _python(_HLO)
  assert 'usable True True True reason None None None' in out
  assert 'DepthwiseConv calls 1 1 0 0 0 0 0 0' in out
  assert 'HMHSA calls 0 0 1 1 1 1 0 0' in out
  assert 'GroupNorm calls 0 0 0 0 0 0 1 1' in out


@pytest.mark.parametrize('env,reason', [({'HATNET_JAX_NATIVE': '0'}, 'disabled by HATNET_JAX_NATIVE=0'),
                                        ({'CXX': '/nonexistent/c++'}, "no C++ compiler ('/nonexistent/c++' not found")])
def test_without_the_kernels_the_defaults_take_xla_paths(env, reason):
  out = _python(_HLO, **env)
  assert 'usable False False False reason' in out and out.count(reason) == 3
  assert out.count(' calls 0 0 0 0 0 0 0 0') == 3


def test_a_failed_build_says_why_and_falls_back(tmp_path):
  compiler = tmp_path / 'broken-c++'
  compiler.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo broken 1.0; exit 0; fi\n'
                      'echo "error: no such thing" >&2; exit 1\n')
  compiler.chmod(0o755)
  out = _python(_HLO, CXX=str(compiler), HATNET_JAX_NATIVE_CACHE=str(tmp_path / 'cache'))
  assert 'usable False False False' in out and 'error: no such thing' in out
  assert out.count(' calls 0 0 0 0 0 0 0 0') == 3


_PARITY = """
    import jax, jax.numpy as jnp, numpy as np
    from hatnet_jax.models import attention, fused_attention, fused_depthwise, fused_group_norm, native
    r = np.random.RandomState(0)
    arr = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
    def check(name, f, ref, *args):  # values and gradients of a random projection of the output
      w = arr(*jax.eval_shape(ref, *args).shape)
      loss = lambda fn: lambda *a: (fn(*a) * w).sum()
      argnums = tuple(range(len(args)))
      got, want = jax.jit(jax.value_and_grad(loss(f), argnums))(*args), jax.value_and_grad(loss(ref), argnums)(*args)
      err = max(float(jnp.max(jnp.abs(a - b)) / (1 + jnp.max(jnp.abs(b)))) for a, b in
                zip(jax.tree.leaves(got), jax.tree.leaves(want)))
      print(name, 'error', err, 'ok' if err < 1e-4 else 'FAILED')
    # Channel counts (20, heads of 12) that are not whole vectors; windows that do not divide the map.
    x, k = arr(2, 9, 11, 20), arr(3, 3, 20) * 0.3
    def depthwise_xla(x, k):
      y = jax.lax.conv_general_dilated(jax.nn.silu(x), k[:, :, None, :], (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=20)
      return jax.nn.silu(y)
    check('depthwise', fused_depthwise.silu_depthwise_silu, depthwise_xla, x, k)
    qkv = arr(2, 10, 9, 72)
    check('windows', lambda a: attention.local_attention(a, 2, 4, 'native'),
          lambda a: attention.local_attention(a, 2, 4, 'xla'), qkv)
    def global_xla(q, kv):
      heads = lambda a: a.reshape(a.shape[0], a.shape[1], 2, 12)
      out = jax.nn.dot_product_attention(heads(q), heads(kv[..., :24]), heads(kv[..., 24:]), implementation='xla')
      return out.reshape(q.shape)
    check('global', lambda q, kv: fused_attention.global_attention(q, kv, 2), global_xla, arr(2, 30, 24), arr(2, 7, 48))
    def group_norm_xla(x, s, b):
      mean = x.mean(axis=(1, 2, 3), keepdims=True)
      var = ((x - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
      return (x - mean) * jax.lax.rsqrt(var + 1e-5) * s + b
    check('group_norm', lambda x, s, b: fused_group_norm.group_norm(x, s, b, 1e-5), group_norm_xla,
          arr(2, 5, 7, 20), 1 + arr(20) * 0.1, arr(20) * 0.1)
    print('built', sorted(n.split('-')[0] for n in __import__('os').listdir(native.cache_dir())))
    """


def _has_avx512() -> bool:
  try:
    with open('/proc/cpuinfo') as f:
      return ' avx512f' in f.read()
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(__import__('platform').machine() != 'x86_64', reason='x86 instruction sets')
@pytest.mark.parametrize('march', ['x86-64-v3', 'x86-64-v4'])
def test_kernels_built_for_avx2_and_avx512_match_xla(march, tmp_path):
  """cpu_kernels.h picks the vector width and register blocks by instruction set (AVX-512 or AVX2); a
  machine runs -march=native's branch only, so both are built here by name (HATNET_JAX_NATIVE_MARCH) and
  each is checked against XLA's paths wherever this CPU can run it."""
  if march == 'x86-64-v4' and not _has_avx512():
    pytest.skip('this CPU has no AVX-512')
  out = _python(_PARITY, HATNET_JAX_NATIVE_MARCH=march, HATNET_JAX_NATIVE_CACHE=str(tmp_path / 'cache'))
  assert out.count(' ok') == 4 and 'FAILED' not in out, out
  assert "built ['group_norm', 'native_attention', 'silu_depthwise_silu']" in out, out
