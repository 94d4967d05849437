"""`python -m hatnet_jax.sweep ...`: see hatnet_jax/sweep/__init__.py and docs/sweeps.md."""
from hatnet_jax.sweep import cli

if __name__ == '__main__':
  cli.run()
