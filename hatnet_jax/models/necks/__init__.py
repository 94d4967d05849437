"""Necks: modules between the backbone's stage maps and a head (the FPN that Semantic FPN uses, and that
RetinaNet and Mask R-CNN will configure for themselves). Imports `models.layers`/`models.resize` only.
"""
