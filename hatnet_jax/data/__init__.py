"""Input pipelines. The shared core sits here: `sources` (random-access records: TFDS array_record, files,
memory), `stream` (the (seed, step) index stream, tf.data options, `GlobalBatches` that turns this process's
rows into global jax.Arrays), `tf_host` (tensorflow imported for the host only) and `testing` (small
synthetic datasets). One folder per task (`classification/`, `segmentation/`, `detection/`) holds its
transforms, augmentation and iterators, and `demos/` the offline datasets built from data that ships in pip
packages (digits, digit scenes, digit boxes). Imports `layout` only, and tensorflow lazily: importing the package does
not import it.
"""
