"""The segmentation input pipeline (ADE20K recipe as mmseg 0.13 / PVT): `sources` (ADE20K TFDS builder,
segmentation folders, digit scenes), `transforms` (resize by ratio range, cat-max-ratio crop, flip,
photometric distortion, padding, the whole-image AlignResize test path) and `pipeline` (train and eval
iterators). Imports `data`'s core and `layout`.
"""
