"""hatnet_jax.training.xla_options: the CPU compiler options of the steps, checked before anything else compiles."""
import jax
import pytest

from configs import default
from hatnet_jax.training import xla_options


def test_config_default_is_the_module_default():
  # predict/benchmarks use DEFAULT_CPU, the trainer the config: the two must not drift apart.
  assert dict(default.get_config().cpu_compiler_options) == xla_options.DEFAULT_CPU


def test_options_reach_the_compiler_and_empty_ones_are_dropped():
  assert jax.default_backend() == 'cpu'
  assert xla_options.compiler_options() == xla_options.DEFAULT_CPU
  options = xla_options.compiler_options({'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
                                          'xla_cpu_opt_preset': ''})  # dropped
  assert options == {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  assert xla_options.compiler_options({'xla_cpu_opt_preset': None}) is None
  # more options than the default: passed on as they are
  options = xla_options.compiler_options({'xla_cpu_opt_preset': 'CPU_OPT_PRESET_FAST_COMPILE'})
  assert options == {'xla_cpu_opt_preset': 'CPU_OPT_PRESET_FAST_COMPILE'}


@pytest.mark.parametrize('options, words', [({'xla_cpu_opt_preset': 'FAST'}, "'FAST' is not a valid enum value"),
                                            ({'xla_cpu_opt_prest': 'X'}, "No such compile option")])
def test_a_bad_option_is_a_config_error(options, words):
  with pytest.raises(ValueError, match='config.cpu_compiler_options') as e:
    xla_options.compiler_options(options)
  assert words in str(e.value) and "set an option to ''" in str(e.value)
