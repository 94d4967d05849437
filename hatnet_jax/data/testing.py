"""Small synthetic data for tests and benchmarks: photo-like JPEGs, image folders, a fake ImageNet
manual dir (the real TFDS tar layout), corrupt files. No tensorflow needed."""
import io
import os
import tarfile

import numpy as np


def make_image(rng, width=500, height=375):
  """A photo-like uint8 [height, width, 3] image: smooth colour field, blobs, sensor-like noise."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC)).astype(np.float32)
  yy, xx = np.mgrid[0:height, 0:width]
  for _ in range(6):
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.05, 0.3) * max(width, height)
    m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[m] = img[m] * 0.5 + rng.uniform(0, 255, 3) * 0.5
  img += rng.normal(0, 12, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def encode(img, fmt='JPEG', quality=90):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  if fmt == 'JPEG':
    Image.fromarray(img).save(buf, 'JPEG', quality=quality)
  else:
    Image.fromarray(img).save(buf, fmt)
  return buf.getvalue()


def make_jpeg(rng, width=500, height=375, quality=90):
  return encode(make_image(rng, width, height), 'JPEG', quality)


def corrupt_jpeg(rng):
  """Bytes that start like a JPEG but cannot be decoded."""
  good = make_jpeg(rng, 64, 48)
  return good[:40] + b'\x00' * 16


def make_image_folder(root, splits, size=(40, 30), seed=0, fmt='JPEG'):
  """root/<split>/<class>/<i>.jpg. `splits`: {split: {class_name: count}}. Returns the root."""
  rng = np.random.default_rng(seed)
  ext = {'JPEG': 'jpg', 'PNG': 'png'}[fmt]
  for split, classes in splits.items():
    for cls, count in classes.items():
      d = os.path.join(root, split, cls)
      os.makedirs(d, exist_ok=True)
      for i in range(count):
        with open(os.path.join(d, f'{cls}_{i}.{ext}'), 'wb') as f:
          f.write(encode(make_image(rng, *size), fmt))
  return root


def make_fake_imagenet(manual_dir, synsets, images_per_class=2, num_val=5, size=(40, 30), seed=0):
  """A tiny manual dir in the layout TFDS imagenet2012 reads.

  ILSVRC2012_img_train.tar holds one tar per synset (<synset>.tar with <synset>_<i>.JPEG), and
  ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG; TFDS labels the sorted validation file
  names with the first lines of its bundled validation_labels.txt.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for syn in synsets:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for i in range(images_per_class):
          add(inner, f'{syn}_{i}.JPEG', make_jpeg(rng, *size))
      add(outer, f'{syn}.tar', buf.getvalue())
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    for i in range(num_val):
      add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', make_jpeg(rng, *size))
  return manual_dir
