"""--huge_pages, shared by model_speed.py and roofline.py: on CPU the benchmark restarts with glibc's huge-page
tunable, as main.py does (hatnet_jax.training.host_memory)."""
import argparse

from hatnet_jax.training import host_memory


def add_host_memory_flag(parser: argparse.ArgumentParser):
  """Adds --huge_pages to a benchmark's command line."""
  parser.add_argument('--huge_pages', type=int, default=1,
                      help="1: restart with glibc's huge-page tunable on CPU, as main.py does by default "
                      "(hatnet_jax.training.host_memory, config.cpu_huge_pages), 0: glibc's default")


def apply_host_memory_flag(args, from_command_line: bool):
  """Call right after parsing, before anything else: it may start the program again. Only from the command
  line (main(argv=None)): called from Python (a test, a notebook) it must not restart the caller's process."""
  if not args.huge_pages:
    return
  if from_command_line:
    print('host memory: %s (%s)' % host_memory.reexec_with_huge_pages(), flush=True)
  else:
    print(f'host memory: not restarted (called from Python; huge pages in effect: {host_memory.in_effect()})',
          flush=True)
