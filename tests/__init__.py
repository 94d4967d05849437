"""The test suite; its folders mirror hatnet_jax/ (references/ holds the independent PyTorch models and the
pinned parameter counts)."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
