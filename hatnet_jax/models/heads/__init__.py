"""Heads: task outputs from a neck's maps (Semantic FPN's FPNHead now; RetinaNet's and Mask R-CNN's heads
belong here too). Imports `models.layers`/`models.resize` only; box operations will come from
`hatnet_jax.structures`.
"""
