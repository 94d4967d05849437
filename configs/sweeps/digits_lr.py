"""Learning rate x drop path on the digits demo: 2 x 2 short runs (10 epochs, about a CPU minute or two each).

  python -m hatnet_jax.sweep --config=configs/digits.py --sweep=configs/sweeps/digits_lr.py --workdir=runs/digits_lr
  tensorboard --logdir=runs/digits_lr   # HParams tab: one row per point
"""
from hatnet_jax.sweep import fixed, product, sweep


def get_sweep():
  return product(
      sweep('base_lr', [1e-3, 3e-3]),
      sweep('model.drop_path_rate', [0.0, 0.1]),
      fixed('num_epochs', 10),
  )
