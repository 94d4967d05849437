"""Heads: task outputs from a neck's maps: Semantic FPN's FPNHead (`fpn_head.py`) and RetinaNet's RetinaHead
(`retina_head.py`); Mask R-CNN's heads belong here too. Imports `models.layers`/`models.resize` only: box
operations (anchors, decoding, NMS) live in `hatnet_jax.structures` and are applied by the tasks.
"""
