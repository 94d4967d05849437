"""Pinned parameter counts of the HAT-Net variants (tests only)."""
# Trainable parameters at 1000 classes: the official counts less the unused `proj_norm` GroupNorms.
PARAM_COUNTS = {
    'hatnet_tiny': 12_650_152,
    'hatnet_small': 25_738_568,
    'hatnet_medium': 42_925_960,
    'hatnet_large': 63_108_936,
}

# Trainable parameters of RetinaNet (mmdet's RetinaNet with PVT's neck: FPN start_level 1, 5 outputs, P6 from
# the last backbone map; RetinaHead, 9 anchors) at 80 classes. mmdet 3.3.0's RetinaNet built from its
# retinanet_r50_fpn.py on tests/references/torch_hatnet.py's backbone has the same counts, less the
# backbone's unused proj_norm GroupNorms (tests/models/test_retinanet.py checks it where mmdet is installed).
RETINANET_PARAM_COUNTS = {
    'hatnet_tiny': 22_158_772,
    'hatnet_small': 35_475_540,
    'hatnet_medium': 52_662_932,
    'hatnet_large': 73_045_588,
}

# Trainable parameters of Mask R-CNN (mmdet's mask-rcnn_r50_fpn.py with PVT's neck: FPN on all four stages, 5
# outputs, P6 by max-pool; RPNHead with 3 anchors, Shared2FCBBoxHead, FCNMaskHead) at 80 classes. mmdet 3.3.0's
# MaskRCNN on tests/references/torch_hatnet.py's backbone has the same counts, less the backbone's unused
# proj_norm GroupNorms (tests/models/test_mask_rcnn.py checks it where mmdet is installed).
MASK_RCNN_PARAM_COUNTS = {
    'hatnet_tiny': 32_367_024,
    'hatnet_small': 45_392_976,
    'hatnet_medium': 62_580_368,
    'hatnet_large': 82_668_112,
}
