"""Heads: task outputs from a neck's maps: Semantic FPN's FPNHead (`fpn_head.py`), RetinaNet's RetinaHead
(`retina_head.py`), Mask R-CNN's RPNHead (`rpn_head.py`) and its box and mask heads on pooled RoI features
(`roi_heads.py`). Imports `models.layers`/`models.resize` only: box operations (anchors, decoding, NMS,
RoIAlign) live in `hatnet_jax.structures` and are applied by the tasks.
"""
