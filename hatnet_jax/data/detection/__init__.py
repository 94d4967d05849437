"""The detection input pipeline (RetinaNet 1x on COCO, mmdet 3.3.0 / PVT): `records` (the per-image record
both datasets store), `coco_layout` + `coco` (the COCO 2017 TFDS builder and its checks), `sources` (dataset
facts, random-access splits, the evaluation ground truth), `transforms` (resize, flip, box arithmetic as
mmdet), `batching` (canvas-homogeneous training batches as a function of (seed, step); the exact eval pass)
and `pipeline` (train and eval iterators). Imports `data`'s core, `data.segmentation.transforms` (the
cv2-exact resize) and `layout`; tensorflow only inside these modules, not on importing the package.
"""
