"""XLA compiler options of the jitted programs on the CPU backend (`config.cpu_compiler_options`).

Measured on this repository's 2-core CPU machine (BENCHMARKS.md), batch 16 at 224 px:
`xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED` orders a program's operations so that fewer
buffers are alive at once: train-step peak RSS hatnet_tiny 7.3 -> 4.5 GB, hatnet_medium 20.7 -> 10.8 GB,
and the step no slower (medium 16.0 -> 13.9 s: smaller temporaries to fault in and to stream).
Tried and left out: XLA's fast-compile preset (`xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE`) shortened
tiny's compile in one run (28.7 -> 24.9 s) and lengthened it in another (31.2 -> 36.1 s); it leaves
SiLU's sigmoid and product as separate kernels with a portable exp (at 16x56x56x384 SiLU's forward
16.5 -> 49.5 ms, its gradient 55.0 -> 23.5 ms): no steady gain.
On GPU/TPU nothing is passed: these are settings of XLA's CPU compiler.
"""
import jax

DEFAULT_CPU = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


def compiler_options(cpu_options=None) -> dict[str, str] | None:
  """`cpu_options` (default: DEFAULT_CPU) for jax.jit(compiler_options=...) where the CPU is the backend,
  without the entries set to '' or None (a config override's way to drop one); None elsewhere.

  Checked here by compiling a trivial program with them, so that a misspelt name or value fails before
  the run compiles (or loads) anything else: ValueError naming config.cpu_compiler_options.
  """
  if jax.default_backend() != 'cpu':
    return None
  options = {k: v for k, v in dict(DEFAULT_CPU if cpu_options is None else cpu_options).items()
             if v not in ('', None)}
  if not options:
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(jax.ShapeDtypeStruct((), 'float32')).compile()
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f'config.cpu_compiler_options {options}: XLA refused them ({e}). Check the option names '
                     "and values (XLA_FLAGS=--help python -c 'import jax; jax.jit(abs)(1.)' lists them), or set an "
                     "option to '' to drop it.") from None
  return options
