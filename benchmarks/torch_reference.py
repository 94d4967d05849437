"""The PyTorch reference of benchmarks/model_speed.py --compare_torch, run as a process of its own.

    python benchmarks/torch_reference.py --model=hatnet_tiny --batch_size=16 --image_size=224

Times the PyTorch HAT-Net of the parity tests (tests/references/torch_hatnet.py): an AdamW train step (plain
integer-label cross-entropy) and inference, on one device (CUDA if available, with bf16 autocast for
--dtype=bfloat16), and prints one JSON line: images/s (median of --repeats) and the peak memory of this
process alone (host peak RSS, or on CUDA torch's peak allocated device memory), which is why it runs
apart from the JAX process. It imports neither jax nor flax: the variant's hyper-parameters come from
hatnet_jax/models/backbone/variants.py loaded as a plain file.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 1000


def _variants():
  """hatnet_jax/models/backbone/variants.py without importing the hatnet_jax package (which pulls in jax)."""
  spec = importlib.util.spec_from_file_location('_hatnet_variants', os.path.join(REPO, 'hatnet_jax', 'models',
                                                                                  'backbone', 'variants.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses looks the module up by name
  spec.loader.exec_module(module)
  return module


def peak_rss_bytes() -> int:
  """This process's peak resident set size. On Linux VmHWM of /proc/self/status, which counts this
  program's own memory only: ru_maxrss of a child also keeps the RSS its parent had when it forked."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time(fn, warmup: int, repeats: int, steps: int) -> list[float]:
  """Seconds per step of `fn` (which blocks), for each repetition of `steps` steps."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      fn()
    out.append((time.perf_counter() - t) / steps)
  return out


def run(model: str, batch_size: int, image_size: int, dtype: str, modes, warmup: int, repeats: int,
        steps: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(REPO, 'tests', 'references'))
  import torch_hatnet  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  variant = _variants().get_variant(model)
  net = torch_hatnet.HATNet(variant, num_classes=NUM_CLASSES, drop_path_rate=0.1).to(device)
  net = net.to(memory_format=torch.channels_last)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
  x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
  amp = dict(device_type=device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def train_step():
    with torch.autocast(**amp):
      loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()

  def infer():
    with torch.no_grad(), torch.autocast(**amp):
      net(x)
    sync()

  out = dict(torch=torch.__version__, torch_device=device, torch_threads=torch.get_num_threads())
  if 'train' in modes:
    net.train()
    out['torch_train_images_per_s'] = statistics.median(
        batch_size / t for t in _time(train_step, warmup, repeats, steps))
  if 'infer' in modes:
    net.eval()
    out['torch_infer_images_per_s'] = statistics.median(
        batch_size / t for t in _time(infer, warmup, repeats, steps))
  if device == 'cuda':
    out['torch_peak_memory_bytes'] = int(torch.cuda.max_memory_allocated())
    out['torch_peak_memory_kind'] = 'device peak (torch allocator)'
  else:
    out['torch_peak_memory_bytes'] = peak_rss_bytes()
    out['torch_peak_memory_kind'] = 'host peak RSS (own process)'
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='hatnet_tiny', help='a HAT-Net variant (classifier)')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--mode', default='train,infer', help='train, infer or both (comma-separated)')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps', type=int, default=1)
  args = parser.parse_args(argv)
  print(json.dumps(run(args.model, args.batch_size, args.image_size, args.dtype, args.mode.split(','), args.warmup,
                       args.repeats, args.steps)), flush=True)


if __name__ == '__main__':
  main()
