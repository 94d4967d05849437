"""Necks: modules between the backbone's stage maps and a head: the FPN (`fpn.py`), configured per model
(Semantic FPN: every level; RetinaNet: from stride 8 with two extra stride-2 levels; Mask R-CNN will take
its own settings). Imports `models.layers`/`models.resize` only.
"""
