"""Offline demo datasets built from data shipped in pip packages, as TFDS builders: `digits` (scikit-learn's
8x8 digit images, upscaled) and `digit_scenes` (digits pasted on a canvas; the segmentation labels are the
pasted digits' pixels, derived, not annotated). Imports `data`'s core only.
"""
