"""Hyperparameter sweeps: one `python main.py` run per point of a sweep file, then a table of the results.

A sweep file (configs/sweeps/*.py) defines `get_sweep()`, which returns the points: a list of override dicts
keyed by config paths, as on the command line (`'data.image_size'` is `--config.data.image_size`). Build it
with `sweep`, `product`, `zipit`, `chainit` and `fixed`, or write the list by hand:

    from hatnet_jax.sweep import product, sweep

    def get_sweep():
      return product(sweep('base_lr', [1e-3, 2e-3]), sweep('drop_path_rate', [0.0, 0.1]))

Run it over a base config (extra `--config.k=v` flags apply to every point, e.g. a shorter budget):

    python -m hatnet_jax.sweep --config=configs/digits.py --sweep=configs/sweeps/digits_lr.py --workdir=DIR
    python -m hatnet_jax.sweep ... --launcher=slurm --slurm_gpus_per_node=8 --slurm_time=600  # SLURM jobs
    python -m hatnet_jax.sweep ... --dry_run      # only print each point's `python main.py ...` command
    python -m hatnet_jax.sweep ... --summary_only # only rebuild DIR/summary.{csv,md} from the run records

Modules: api (the sweep-file API), points (resolve, validate and name points), local (the local runner),
slurm (the submitit launcher), state (what a point's files say), summary (the table), cli.

Each point trains in DIR/<name> (name = the values its swept settings take, e.g.
`base_lr=0.001,drop_path_rate=0.1`). Everything about a run's progress comes from the run records the
trainer writes (DIR/<point>/run.json, metrics.jsonl: hatnet_jax.training.run_record): a point is finished iff its
run.json says status 'finished' and step == num_steps; finished points are skipped, the others run again
and resume from their latest checkpoint.
"""
from hatnet_jax.sweep.api import SweepError, chainit, fixed, product, sweep, zipit
from hatnet_jax.sweep.points import MAIN, MAX_NAME_LEN, Point, cli_value, load_sweep, make_points, parse_config
from hatnet_jax.sweep.points import point_name
from hatnet_jax.sweep.state import LOG_FILE, STATUS_FILE, SWEEP_FILE, error_of, is_finished
from hatnet_jax.sweep.summary import write_summary
from hatnet_jax.sweep.local import run_sweep

__all__ = ['SweepError', 'chainit', 'fixed', 'product', 'sweep', 'zipit', 'MAIN', 'MAX_NAME_LEN', 'Point',
           'cli_value', 'load_sweep', 'make_points', 'parse_config', 'point_name', 'LOG_FILE', 'STATUS_FILE',
           'SWEEP_FILE', 'error_of', 'is_finished', 'write_summary', 'run_sweep']
