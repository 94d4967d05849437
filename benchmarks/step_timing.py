"""The benchmarks' timing harness: seconds per call of functions that block until their work is done,
after untimed warm-up calls (model_speed.py's train and inference steps, roofline.py's step and its
micro-benchmarks)."""
import time


def time_steps(fn, warmup: int, repeats: int, steps: int) -> list[float]:
  """Seconds per step of `fn` (which blocks), for each repetition of `steps` steps."""
  return time_steps_alternating({'': fn}, warmup, repeats, steps)['']


def time_steps_alternating(fns: dict, warmup: int, repeats: int, steps: int) -> dict[str, list[float]]:
  """Like `time_steps` for several functions, whose repetitions alternate (so a busy moment of the machine
  touches all of them alike): {name: seconds per step for each repetition}."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  out = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      for _ in range(steps):
        fn()
      out[name].append((time.perf_counter() - t) / steps)
  return out


def best_seconds(fn, repeats: int) -> float:
  """Fastest of `repeats` calls of `fn` (which blocks), after one untimed call."""
  return min(time_steps(fn, 1, repeats, 1))
