"""`python -m hatnet_jax.sweep --config=BASE --sweep=SWEEP_FILE --workdir=DIR [--config.k=v ...]`."""
import os
import sys

from hatnet_jax.sweep import local
from hatnet_jax.sweep import slurm
from hatnet_jax.sweep import state
from hatnet_jax.sweep import summary
from hatnet_jax.sweep.api import SweepError
from hatnet_jax.sweep.points import load_sweep, make_points

LAUNCHERS = ('local', 'slurm', 'submitit_local')


def slurm_options(flag_values) -> slurm.SlurmOptions:
  return slurm.SlurmOptions(
      partition=flag_values.slurm_partition or None, nodes=flag_values.slurm_nodes,
      gpus_per_node=flag_values.slurm_gpus_per_node, time_min=flag_values.slurm_time,
      cpus_per_task=flag_values.slurm_cpus_per_task, mem_gb=flag_values.slurm_mem_gb,
      cluster='local' if flag_values.launcher == 'submitit_local' else 'slurm')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  flag_values = flags.FLAGS
  config_arg = config_flags.get_config_filename(flag_values['config'])
  base_overrides = config_flags.get_override_values(flag_values['config'])
  workdir = flag_values.workdir
  try:
    points = make_points(config_arg, workdir, load_sweep(flag_values.sweep), base_overrides)
  except SweepError as e:
    print(f'sweep: error: {e}', file=sys.stderr)
    return 2
  launcher = flag_values.launcher
  options = slurm_options(flag_values) if launcher != 'local' else None
  if flag_values.dry_run:
    for point in points:
      print(point.command if options is None else ' '.join(slurm.job_argv(point, options)[1:]).join(['python ', '']))
    return 0
  sweep_info = dict(config=config_arg, sweep=flag_values.sweep, base_overrides=base_overrides, launcher=launcher)
  if flag_values.summary_only:
    rows = summary.write_summary(points, workdir, sweep_info=sweep_info)
    print(f'wrote {os.path.join(workdir, "summary.md")} and summary.csv')
    return summary.exit_status(rows)
  log = lambda msg: print(f'sweep: {msg}', file=sys.stderr, flush=True)
  if options is None:
    rows, status = local.run_sweep(points, workdir, sweep_info=sweep_info, log=log)
  else:
    rows, status = slurm.run_sweep(points, workdir, options, wait=not flag_values.no_wait, sweep_info=sweep_info,
                                   log=log)
    if flag_values.no_wait:
      print(f'sweep: submitted; later: the same command with --summary_only writes {workdir}/summary.md',
            file=sys.stderr)
      return status
  with open(os.path.join(workdir, 'summary.md')) as f:
    print(f.read())
  failed = [r['point'] for r in rows if r['status'] not in summary.FINISHED]
  if failed:
    print(f'sweep: not finished: {", ".join(failed)} (see their {state.LOG_FILE})', file=sys.stderr)
  return status


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'Base config file (as for main.py); --config.k=v flags '
                                  'apply to every point.', lock_config=True)
  flags.DEFINE_string('sweep', None, 'Sweep file: a Python file whose get_sweep() returns the points.')
  flags.DEFINE_string('workdir', None, 'Each point runs in WORKDIR/<point name>; summary.{csv,md} go here.')
  flags.DEFINE_bool('dry_run', False, 'Print the main.py command of every point and exit.')
  flags.DEFINE_bool('summary_only', False, 'Only write WORKDIR/summary.{csv,md} from the points\' run records.')
  flags.DEFINE_enum('launcher', 'local', LAUNCHERS, 'local: the points one after another on this machine; '
                    'slurm: one SLURM job per point (submitit); submitit_local: the same through submitit\'s '
                    'local executor (tests).')
  flags.DEFINE_bool('no_wait', False, 'slurm: submit the jobs and exit (later: --summary_only).')
  flags.DEFINE_string('slurm_partition', None, 'slurm: partition.')
  flags.DEFINE_integer('slurm_nodes', 1, 'slurm: nodes per job (one JAX process per node; > 1 adds '
                       '--multihost to the main.py command).')
  flags.DEFINE_integer('slurm_gpus_per_node', 0, 'slurm: GPUs per node.')
  flags.DEFINE_integer('slurm_time', 60, 'slurm: time limit per job in minutes.')
  flags.DEFINE_integer('slurm_cpus_per_task', None, 'slurm: CPUs per task (= per node).')
  flags.DEFINE_integer('slurm_mem_gb', None, 'slurm: memory per node in GB.')
  flags.mark_flags_as_required(['config', 'sweep', 'workdir'])


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
