"""Pinned parameter counts of the HAT-Net variants (tests only)."""
# Trainable parameters at 1000 classes: the official counts less the unused `proj_norm` GroupNorms.
PARAM_COUNTS = {
    'hatnet_tiny': 12_650_152,
    'hatnet_small': 25_738_568,
    'hatnet_medium': 42_925_960,
    'hatnet_large': 63_108_936,
}
