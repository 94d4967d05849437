"""Instance masks on the host (`data/detection/masks.py`): the nearest resize against cv2 INTER_NEAREST on many
sizes and by hand, the bit packing's round trip and bit order, pycocotools decoding of polygons / RLEs
(against mmdet's LoadAnnotations._poly2mask and _process_masks where mmdet is installed), the errors, and
`canvas_masks` (padding rows, flip, an image without objects)."""
import json
import time

import numpy as np
import pytest

pytest.importorskip('pycocotools')

from hatnet_jax.data.demos import digit_boxes  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.detection import masks  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_nearest_sources_by_hand():
  assert masks.nearest_sources(3, 5).tolist() == [0, 0, 1, 1, 2]  # floor(d * 0.6)
  assert masks.nearest_sources(5, 2).tolist() == [0, 2]  # floor(d * 2.5)
  assert masks.nearest_sources(4, 4).tolist() == [0, 1, 2, 3]
  # 307 * 300 / 614 = 150 exactly, but OpenCV multiplies by the float64 reciprocal 1 / (614 / 300): 149.
  assert masks.nearest_sources(300, 614)[307] == 149


def test_rescale_nearest_equals_cv2_inter_nearest_on_many_sizes():
  cv2 = pytest.importorskip('cv2')
  rng = np.random.default_rng(0)
  pairs = [((480, 640), (800, 1066)), ((640, 480), (1066, 800)), ((300, 2000), (614, 4096)), ((427, 640), (800, 1199)),
           ((1, 1), (800, 800)), ((64, 96), (64, 96)), ((80, 80), (96, 96)), ((50, 37), (96, 71)), ((1000, 7), (3, 2))]
  pairs += [(tuple(rng.integers(1, 400, 2)), tuple(rng.integers(1, 900, 2))) for _ in range(250)]
  for (h, w), (nh, nw) in pairs:
    m = (rng.random((h, w)) < 0.5).astype(np.uint8)
    want = cv2.resize(m, (int(nw), int(nh)), interpolation=cv2.INTER_NEAREST)
    got = masks.rescale_nearest(m[None], int(nh), int(nw))[0]
    np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=f'{(h, w)} -> {(nh, nw)}')
    np.testing.assert_array_equal(masks.rescale_nearest(m[None], int(nh), int(nw), flip=True)[0], got[:, ::-1])


def test_pack_round_trip_and_little_bit_order():
  m = np.zeros((1, 2, 16), bool)
  m[0, 0, 0] = m[0, 0, 9] = m[0, 1, 7] = m[0, 1, 15] = True
  assert masks.pack(m).tolist() == [[[1, 2], [128, 128]]]  # bit k of byte j is column 8 j + k
  rng = np.random.default_rng(1)
  for w in (8, 96, 1344, 13):
    x = rng.random((3, 5, w)) < 0.3
    p = masks.pack(x)
    assert p.dtype == np.uint8 and p.shape == (3, 5, (w + 7) // 8)
    np.testing.assert_array_equal(p, np.packbits(x, axis=-1, bitorder='little'))
    np.testing.assert_array_equal(masks.unpack(p, w), x)
    assert not masks.unpack(p)[..., w:].any()  # a partial last byte is zero-filled


def _mmdet_loader():
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  pytest.importorskip('mmdet')
  try:
    from mmdet.datasets.transforms import LoadAnnotations  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.skip(f'mmdet does not import here: {e}')
  return LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=True)


SEGMENTATIONS = [
    [[10.0, 10.0, 30.0, 10.0, 30.0, 25.0]],  # a triangle
    [[-5.5, -3.0, 20.0, -2.0, 25.0, 30.0, 2.0, 70.0]],  # partly outside the 64 x 48 image: clipped
    [[40.0, 5.0, 60.0, 5.0, 60.0, 20.0, 40.0, 20.0], [1.0, 1.0, 3.0], [45.0, 30.0, 63.9, 30.0, 50.0, 47.9]],
    [[1.0, 2.0, 3.0, 4.0]],  # no part of >= 6 coordinates: mmdet ignores the instance, empty mask
    [[1.0, 2.0, 3.0, 4.0, 5.0]],  # odd
    {'counts': [5, 10, 3000, 20], 'size': [48, 64]},  # uncompressed RLE (crowd)
    {'size': [48, 64]},  # a dict without counts: ignored, empty mask
]


def test_decode_equals_mmdets_load_annotations():
  load = _mmdet_loader()
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  segs = list(SEGMENTATIONS)
  m = np.zeros((48, 64), np.uint8, order='F')
  m[3:40, 7:50] = 1
  m[10:20, 20:30] = 0
  compressed = mask_utils.encode(m)
  segs.append({'counts': compressed['counts'].decode('ascii'), 'size': [48, 64]})  # compressed RLE
  segs[5]['counts'][-1] = 48 * 64 - sum(segs[5]['counts'][:-1])
  instances = [dict(bbox=[0, 0, 10, 10], bbox_label=0, ignore_flag=int(i == 5), mask=json.loads(json.dumps(s)))
               for i, s in enumerate(segs)]
  out = load(dict(ori_shape=(48, 64), img_shape=(48, 64), instances=instances))
  want = out['gt_masks'].masks
  for j, s in enumerate(segs):
    got, ignored = masks.decode(json.dumps(s), 48, 64, 1, j, j)
    np.testing.assert_array_equal(got, want[j], err_msg=str(s))
    assert ignored == (j in (3, 4, 6))
    assert bool(out['gt_ignore_flags'][j]) == (ignored or j == 5)
  np.testing.assert_array_equal(want[-1], m)
  assert want[1][0, 0] == 1 and want[1].sum() > 0 and want[3].sum() == 0


def test_decode_by_hand_and_the_demos_rle():
  got, ignored = masks.decode('[[1, 1, 5, 1, 5, 4, 1, 4]]', 6, 7)  # pycocotools fills x in [1, 5), y in [1, 4)
  want = np.zeros((6, 7), np.uint8)
  want[1:4, 1:5] = 1
  np.testing.assert_array_equal(got, want)
  assert not ignored
  ink = np.random.default_rng(2).random((33, 21)) < 0.4
  got, _ = masks.decode(json.dumps(digit_boxes.rle(ink)), 33, 21)
  np.testing.assert_array_equal(got, ink)


@pytest.mark.parametrize('seg, match', [
    ('', r"image_id 7, kept object 2 \(annotation id 12\) has no segmentation \(objects/segmentation is ''\).*"
         r'or set config.data.with_masks=False'),
    ('{"counts": [1, 2], "size": [4, 3]', 'annotation id 12.*objects/segmentation is not JSON'),
    ('{"counts": [12], "size": [3, 4]}', r'RLE has size \[3, 4\] \(h, w\) but the image is \[4, 3\]'),
    ('{"counts": [5, 2], "size": [4, 3]}', r'counts add up to 7, not 4 x 3 = 12 pixels'),
    ('{"counts": "abc", "size": [4, 3]}', 'annotation id 12.*RLE does not decode'),
    ('[1, 2, 3, 4, 5, 6]', 'not of polygons'),
    ('3', 'objects/segmentation is int'),
])
def test_bad_segmentations_are_errors_naming_the_object(seg, match):
  with pytest.raises(masks.MaskError, match=match):
    masks.decode(seg, 4, 3, image_id=7, index=2, ann_id=12)


def test_canvas_masks_pads_flips_and_packs():
  segs = [json.dumps([[0, 0, 4, 0, 4, 2, 0, 2]]), json.dumps({'counts': [0, 12], 'size': [3, 4]}),
          json.dumps([[0, 0, 1, 1]])]
  packed, ignored = masks.canvas_masks(segs, [1, 2, 3], 5, 3, 4, 6, 8, False, 8, 16, max_boxes=5)
  assert packed.shape == (5, 8, 2) and packed.dtype == np.uint8 and ignored.tolist() == [False, False, True]
  full = masks.unpack(packed)
  want = np.zeros((5, 8, 16), bool)
  want[0, :4, :8] = True  # rows 0-1 of 3 -> rows 0-3 of 6 (sources 0, 0, 1, 1, 2, 2), all 4 columns -> 8
  want[1, :6, :8] = True
  np.testing.assert_array_equal(full, want)
  segs[0] = json.dumps([[0, 0, 1, 0, 1, 3, 0, 3]])  # column 0 only
  flipped, _ = masks.canvas_masks(segs[:1], [1], 5, 3, 4, 6, 8, True, 8, 16, max_boxes=2)
  want = np.zeros((2, 8, 16), bool)
  want[0, :6, 6:8] = True  # columns 0-1 of 8, mirrored within the resized width 8
  np.testing.assert_array_equal(masks.unpack(flipped), want)
  empty, ignored = masks.canvas_masks([], [], 5, 3, 4, 6, 8, True, 8, 16, max_boxes=3)
  assert empty.shape == (3, 8, 2) and not empty.any() and ignored.shape == (0,)
  with pytest.raises(ValueError, match='multiple of 8'):
    masks.canvas_masks([], [], 5, 3, 4, 6, 8, False, 8, 12, max_boxes=3)
  with pytest.raises(ValueError, match='set config.data.max_boxes >= 3'):
    masks.canvas_masks(segs, [1, 2, 3], 5, 3, 4, 6, 8, False, 8, 16, max_boxes=2)


def coco_like_polygons(rng, n=20, h=480, w=640, vertices=24):
  """n random star-shaped polygons (COCO's typical vertex count) in an h x w image, as JSON texts."""
  out = []
  for _ in range(n):
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 150)
    a = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    rad = r * rng.uniform(0.5, 1.0, vertices)
    out.append(json.dumps([np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1).reshape(-1).round(2).tolist()]))
  return out


def test_cost_per_coco_image():
  """What the masks cost on the host: a 640 x 480 image with 20 polygons -> 1066 x 800 in the (800, 1344)
  canvas, 100 rows (printed; bounded loosely so a 10x regression fails)."""
  segs = coco_like_polygons(np.random.default_rng(3))
  args = (segs, list(range(20)), 1, 480, 640, 800, 1066, True, 800, 1344)
  masks.canvas_masks(*args, max_boxes=100)
  times = []
  for _ in range(5):
    t = time.perf_counter()
    packed, _ = masks.canvas_masks(*args, max_boxes=100)
    times.append(time.perf_counter() - t)
  assert packed.shape == (100, 800, 168) and packed[:20].any() and not packed[20:].any()
  print(f'canvas_masks, 640x480, 20 polygons -> 800x1344 canvas: {1e3 * min(times):.1f} ms (min of 5)')
  assert min(times) < 1.0
