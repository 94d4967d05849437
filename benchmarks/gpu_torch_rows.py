"""The PyTorch rows of benchmarks/gpu_suite.py: the HAT-Net of tests/references/torch_hatnet.py (as
benchmarks/torch_reference.py builds it: drop path 0.1, channels_last, AdamW, integer-label cross-entropy,
bf16 autocast for dtype bfloat16) eager or under torch.compile, inference first (no optimizer state yet),
then the train step; one process per model and mode. Not meant to be run by hand:

    python benchmarks/gpu_torch_rows.py '{"model": "hatnet_tiny", "batch": 128, "compile": true, ...}'

Peak memory per phase: on CUDA torch's max_memory_allocated, reset between the phases; on CPU this process's
peak RSS after each phase. 'compile_s' (torch.compile) is the first call's time less the fastest timed
call's (it compiles on the first call). Prints one line 'GPU_SUITE_ROW [json, json]' (infer row, train row). Imports no jax.
"""
import json
import os
import statistics
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import torch_reference  # noqa: E402  (the variant table and peak RSS, without jax)


def run_rows(spec: dict) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(torch_reference.REPO, 'tests', 'references'))
  import torch_hatnet  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  variant = torch_reference._variants().get_variant(spec['model'], **spec.get('overrides', {}))  # pylint: disable=protected-access
  net = torch_hatnet.HATNet(variant, num_classes=torch_reference.NUM_CLASSES, drop_path_rate=0.1).to(device)
  net = net.to(memory_format=torch.channels_last)
  model = torch.compile(net) if spec['compile'] else net
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
  b, s = spec['batch'], spec['image_size']
  x = torch.randn(b, 3, s, s, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, torch_reference.NUM_CLASSES, (b,), device=device)
  amp = dict(device_type=device, dtype=torch.bfloat16, enabled=spec['dtype'] == 'bfloat16')
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  losses = []

  def train_step():
    with torch.autocast(**amp):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses[:] = [loss.detach()]

  def infer():
    with torch.no_grad(), torch.autocast(**amp):
      model(x)

  base = dict(device=torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
              backend=device, torch=torch.__version__, torch_threads=torch.get_num_threads(), global_batch=b)
  rows = []
  for kind, fn, train in (('infer', infer, False), ('train', train_step, True)):
    net.train(train)
    if device == 'cuda':
      torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t
    times = []
    for _ in range(spec['warmup'] + spec['repeats']):
      t = time.perf_counter()
      for _ in range(spec['steps']):
        fn()
      sync()
      times.append((time.perf_counter() - t) / spec['steps'])
    times = times[spec['warmup']:]
    ips = sorted(b / t for t in times)
    row = dict(base, kind=kind, images_per_s=statistics.median(ips), images_per_s_min=ips[0],
               images_per_s_max=ips[-1])
    if spec['compile']:
      row['compile_s'] = max(first - min(times), 0.0)
    if train:
      row['loss'] = float(losses[-1])
    if device == 'cuda':
      row['peak_memory_bytes'], row['peak_memory_kind'] = int(torch.cuda.max_memory_allocated()), 'torch max_memory_allocated'
    else:
      row['peak_memory_bytes'], row['peak_memory_kind'] = torch_reference.peak_rss_bytes(), 'host peak RSS'
    rows.append(row)
  return rows


if __name__ == '__main__':
  print('GPU_SUITE_ROW ' + json.dumps(run_rows(json.loads(sys.argv[1]))), flush=True)
