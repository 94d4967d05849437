"""The native CPU kernels' build and choice (hatnet_jax/models/kernels/native.py): on one CPU device the defaults take
every kernel (SiLU -> depthwise -> SiLU, softmax attention, GroupNorm); without them (HATNET_JAX_NATIVE=0, no compiler,
a failing build) they say why and XLA's paths run. Each case runs in a fresh one-device process."""
import os
import subprocess
import sys
import textwrap

import pytest
from tests import REPO_ROOT

REPO = REPO_ROOT


def _python(code, **env):
  full = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu', **env)
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=full, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


_HLO = """
    import jax, jax.numpy as jnp
    from hatnet_jax.models import layers  # pylint: disable=g-import-not-at-top
    from hatnet_jax.models.backbone import attention  # pylint: disable=g-import-not-at-top
    from hatnet_jax.models.kernels import fused_attention, fused_depthwise, fused_group_norm
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



def _cpu_has_avx512() -> bool:
  from hatnet_jax.models.kernels import native  # pylint: disable=g-import-not-at-top
  return 'avx512f' in native._cpu_flags().split()  # pylint: disable=protected-access


# cpu_kernels.h picks the vector width and register blocks by instruction set (AVX-512 or AVX2); a machine's
# -march=native build takes one branch, which the kernel tests check. These two cover the other one.
@pytest.mark.slow
@pytest.mark.skipif(__import__('platform').machine() != 'x86_64', reason='x86 instruction sets')
@pytest.mark.parametrize('march', ['x86-64-v3', 'x86-64-v4'])
def test_both_instruction_set_branches_build(march, tmp_path):
  out = _python("""
      import shutil
      from hatnet_jax.models.kernels import native
      built = native._build_all(shutil.which('g++'))  # {name: library path, or the build's error}
      print('built', sorted(name for name, path in built.items() if isinstance(path, str)))
      """, HATNET_JAX_NATIVE_MARCH=march, HATNET_JAX_NATIVE_CACHE=str(tmp_path))
  assert "built ['group_norm', 'native_attention', 'silu_depthwise_silu']" in out, out


@pytest.mark.slow
@pytest.mark.skipif(__import__('platform').machine() != 'x86_64' or not _cpu_has_avx512(),
                    reason='needs an AVX-512 CPU: elsewhere the native build is the AVX2 branch the kernel tests check')
def test_the_avx2_build_passes_the_kernel_tests(tmp_path):
  """The kernel tests again, with the kernels built for AVX2 (x86-64-v3), which an AVX-512 CPU also runs."""
  env = dict(os.environ, HATNET_JAX_NATIVE_MARCH='x86-64-v3', HATNET_JAX_NATIVE_CACHE=str(tmp_path))
  files = ['tests/models/kernels/test_fused_attention.py', 'tests/models/kernels/test_fused_depthwise.py', 'tests/models/kernels/test_fused_group_norm.py']
  out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0 and 'skipped' not in out.stdout, out.stdout[-3000:]
  assert len(os.listdir(tmp_path)) == 3, os.listdir(tmp_path)  # built here, for x86-64-v3
