"""The SLURM launcher (submitit): every unfinished point is one job running its `python main.py ...`
command (with --multihost when the job has several processes: jax.distributed reads SLURM's environment),
its output appended to DIR/<point>/sweep.log (process 0; process i > 0 to sweep.task<i>.log), submitit's
own files in DIR/<point>/submitit/.

The sweep then waits for the jobs and writes the summary (Ctrl-C stops the waiting, not the jobs); with
--no_wait it submits and exits, and `--summary_only` later writes the table. Relaunching skips finished
points and points whose job is still queued or running; the others are submitted again and resume from
their latest checkpoint. `cluster='local'` (--launcher=submitit_local) runs the jobs as local processes
through submitit's LocalExecutor, for tests.
"""
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from hatnet_jax.sweep import state
from hatnet_jax.sweep import summary
from hatnet_jax.sweep.points import Point

ACTIVE_STATES = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING', 'SUSPENDED', 'RESIZING')
POLL_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  partition: str | None = None
  nodes: int = 1
  gpus_per_node: int = 0
  time_min: int = 60
  cpus_per_task: int | None = None
  mem_gb: int | None = None
  tasks_per_node: int = 1  # one JAX process per node sees all of the node's GPUs
  cluster: str | None = 'slurm'  # 'local': submitit's LocalExecutor (tests); None: submitit picks
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # more submitit parameters

  @property
  def num_processes(self) -> int:
    return self.nodes * self.tasks_per_node


def job_argv(point: Point, options: SlurmOptions) -> list[str]:
  """The point's main.py command, plus --multihost when the job has more than one process."""
  argv = list(point.argv)
  if options.num_processes > 1:
    argv.append('--multihost')
  return argv


def run_command(argv: Sequence[str], point_dir: str, cwd: str) -> int:
  """The job: runs `argv` in `cwd`, its output appended to the point's log; SIGTERM/SIGUSR2 (preemption,
  time limit) are passed on as SIGTERM, so the trainer saves a checkpoint and stops. Returns 0, or raises
  RuntimeError('main.py exited with status N') (so the job counts as failed)."""
  rank = 0
  try:
    import submitit  # pylint: disable=g-import-not-at-top
    rank = submitit.JobEnvironment().global_rank
  except Exception:  # pylint: disable=broad-except  (not inside a submitit job)
    pass
  os.makedirs(point_dir, exist_ok=True)
  log_path = os.path.join(point_dir, state.LOG_FILE if rank == 0 else f'sweep.task{rank}.log')
  with open(log_path, 'ab') as log:
    log.write(f'==== sweep job: {time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(argv)}\n'.encode())
    log.flush()
    proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def forward(signum, frame):
      del signum, frame
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
      returncode = proc.wait()
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
  if returncode != 0:
    raise RuntimeError(f'main.py exited with status {returncode}')
  return 0


def make_executor(folder: str, options: SlurmOptions):
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
  params = dict(timeout_min=options.time_min, nodes=options.nodes, tasks_per_node=options.tasks_per_node)
  if options.gpus_per_node:
    params['gpus_per_node'] = options.gpus_per_node
  if options.cpus_per_task:
    params['cpus_per_task'] = options.cpus_per_task
  if options.mem_gb:
    params['mem_gb'] = options.mem_gb
  if options.partition:
    params['slurm_partition'] = options.partition
  params.update(options.extra)
  executor.update_parameters(**params)
  return executor


def _active_job(executor, job_id: str | None):
  """The job of an earlier launch if it is still queued or running, else None."""
  if not job_id:
    return None
  try:
    job = executor._executor.job_class(executor.folder, job_id)  # pylint: disable=protected-access
    return job if str(job.state).split()[0] in ACTIVE_STATES else None
  except Exception:  # pylint: disable=broad-except
    return None


def _returncode(job) -> tuple[int, str]:
  """(exit status of main.py, error of the job itself) of a finished job: (0, ''), (N, '') when main.py
  exited with status N, (1, the job's exception) when the job failed otherwise (cancelled, killed...)."""
  try:
    job.result()
    return 0, ''
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    m = re.search(r'main\.py exited with status (-?\d+)', text)
    if m:  # main.py ran and failed: its log says why
      return int(m.group(1)), ''
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]  # the job itself failed
    return 1, f'{type(e).__name__}: ' + ' | '.join(lines[:3])


def _submit(points, options, log, executor_factory):
  """Submits each unfinished point (or re-attaches to its job still queued or running): (statuses of the
  skipped points, {name: (point, job, submit time)})."""
  statuses, jobs = {}, {}
  cwd = os.getcwd()
  for i, point in enumerate(points, 1):
    prefix = f'[{i}/{len(points)}] {point.name}'
    if state.is_finished(point):
      statuses[point.name] = 'finished-earlier'
      log(f'{prefix}: finished earlier, skipped')
      continue
    os.makedirs(point.workdir, exist_ok=True)
    executor = executor_factory(os.path.join(point.workdir, 'submitit', '%j'), options)
    previous = state.read_status(point.workdir)
    job = _active_job(executor, previous.get('job_id')) if previous.get('status') == 'submitted' else None
    if job is not None:
      log(f'{prefix}: job {job.job_id} is still queued or running; waiting for it')
      jobs[point.name] = (point, job, time.time())
      continue
    argv = job_argv(point, options)
    job = executor.submit(run_command, argv, point.workdir, cwd)
    attempt = dict(launcher=f'submitit:{options.cluster or "auto"}', job_id=str(job.job_id),
                   start=time.strftime('%Y-%m-%d %H:%M:%S'))
    data = state.record_attempt(point, status='submitted', error='', **attempt)
    data['job_id'] = str(job.job_id)
    state.write_status(point.workdir, data)
    rec = state.record(point) or {}
    resume = rec.get('checkpoint_step')
    log(f'{prefix}: submitted job {job.job_id}' + (f' (resumes from step {resume})' if resume else '') +
        f' (log: {os.path.join(point.workdir, state.LOG_FILE)})')
    jobs[point.name] = (point, job, time.time())
  return statuses, jobs


def run_sweep(points: Sequence[Point], workdir: str, options: SlurmOptions, *, wait: bool = True,
              sweep_info: Mapping[str, Any] | None = None, log=print, executor_factory=make_executor
              ) -> tuple[list[dict[str, Any]], int]:
  """Submits the unfinished points (one job each), waits for them (unless wait=False), writes the summary.

  Returns (the summary rows, exit status: 0 if every point finished, 1 otherwise (or, with wait=False,
  0 once submitted), 128 + signal if the wait was stopped by SIGINT/SIGTERM)."""
  summary.write_sweep_file(points, workdir, sweep_info)
  statuses, jobs = _submit(points, options, log, executor_factory)
  if not wait:
    rows = summary.write_summary(points, workdir, statuses, sweep_info=sweep_info)
    return rows, 0

  stopped = []
  handlers = {s: signal.signal(s, lambda signum, frame: stopped.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    pending = dict(jobs)
    while pending and not stopped:
      for name, (point, job, start) in list(pending.items()):
        if not job.done():
          continue
        del pending[name]
        returncode, job_error = _returncode(job)
        status, error = state.outcome(point, returncode, start, state.log_tail(
            os.path.join(point.workdir, state.LOG_FILE)))
        if status == 'failed' and job_error:
          error = f'job failed: {job_error}; {error}'
        data = state.read_status(point.workdir)
        data.update(status=status, error=error)
        if data.get('attempts'):
          data['attempts'][-1].update(returncode=returncode, wall_time_s=time.time() - start)
        state.write_status(point.workdir, data)
        statuses[name] = status
        log(f'{point.name}: {status}' + (f': {error}' if error else ''))
      if pending and not stopped:
        time.sleep(POLL_SECONDS)
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)
  if stopped:
    print(f'sweep: got signal {stopped[0]}: stopped waiting; the jobs keep running (relaunch, or '
          '--summary_only, later)', file=sys.stderr, flush=True)
  rows = summary.write_summary(points, workdir, statuses, sweep_info=sweep_info)
  if stopped:
    return rows, 128 + stopped[0]
  return rows, summary.exit_status(rows)
