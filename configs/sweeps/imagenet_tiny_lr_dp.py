"""HAT-Net-Tiny on ImageNet-1k: learning rate x drop path, 3 x 2 full 300-epoch runs of the PVT recipe.

base_lr is per 512 images (the peak rate is base_lr x batch_size / 512: 1e-3 is the recipe's peak at 1024).
Print one `python main.py ...` command per point, for a cluster scheduler:

  python -m hatnet_jax.sweep --config=configs/hatnet_tiny.py --sweep=configs/sweeps/imagenet_tiny_lr_dp.py \
      --workdir=runs/tiny_lr_dp --config.data.manual_dir=/path/to/imagenet_tars --dry_run

or run them one after another on this machine (drop --dry_run); afterwards (or after the cluster runs, with
the same --workdir) `... --summary_only` writes runs/tiny_lr_dp/summary.{csv,md}.
"""
from hatnet_jax.sweep import product, sweep


def get_sweep():
  return product(
      sweep('base_lr', [2.5e-4, 5e-4, 1e-3]),
      sweep('model.drop_path_rate', [0.1, 0.2]),
  )
