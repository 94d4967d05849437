"""Image decoding shared by every task's host pipeline.

JPEGs are decoded with libjpeg's accurate integer IDCT: the pixels PIL (timm/torchvision recipes) and
OpenCV (mmcv's `imfrombytes`, mmseg/mmdet) decode. TF's default is the fast IDCT, which differs by ~1 level
on average and up to ~18 on real photographs.
"""
from hatnet_jax.data.tf_host import tf

DCT_METHOD = 'INTEGER_ACCURATE'


def decode_image(data):
  """Encoded JPEG/PNG/GIF/BMP bytes (whatever the file name says) -> uint8 RGB [h, w, 3]. Greyscale and
  CMYK JPEGs become RGB like PIL's convert('RGB'). Raises InvalidArgumentError if corrupt."""
  img = tf.cond(tf.io.is_jpeg(data),
                lambda: tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD),
                lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
  img.set_shape([None, None, 3])
  return img
