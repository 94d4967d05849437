"""Offline demo datasets built from data shipped in pip packages, as TFDS builders: `digits` (scikit-learn's
8x8 digit images, upscaled) and `digit_scenes` (digits pasted on a canvas; the segmentation labels are the
pasted digits' pixels, derived, not annotated) and `digit_boxes` (the same scenes with one box per digit: its
ink's extent, derived). Imports `data`'s core and `data.detection.records` (the detection record format).
"""
