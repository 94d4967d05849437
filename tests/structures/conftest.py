"""The reference libraries of the structures tests, each skipping its tests when absent: mmdet 3.3.0 (on
mmcv-lite, with tests/references/mmseg_stub.py standing in for the compiled mmcv.ops) and torchvision."""
import numpy as np
import pytest


@pytest.fixture(scope='session')
def mmdet():
  pytest.importorskip('mmdet')
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  import mmdet as module  # pylint: disable=g-import-not-at-top
  return module


def _torchvision_ops():
  """torchvision.ops, or a skip naming why it is unusable (e.g. a CUDA build on a CPU torch)."""
  try:
    import torchvision.ops  # pylint: disable=g-import-not-at-top
  except (ImportError, OSError, RuntimeError) as e:
    pytest.skip(f'torchvision does not load here ({type(e).__name__}: {str(e)[:80]})')
  return torchvision.ops


@pytest.fixture(scope='session')
def tv_ops():
  return _torchvision_ops()


class _TorchvisionNms:
  """torchvision's own nms and batched_nms paths, in the interface of tests/structures/reference_nms.py."""

  def __init__(self, ops):
    from torchvision.ops import boxes  # pylint: disable=g-import-not-at-top
    self.nms, self.batched_nms = ops.nms, ops.batched_nms
    self.coordinate_trick = boxes._batched_nms_coordinate_trick  # pylint: disable=protected-access


@pytest.fixture(scope='session', params=['torchvision', 'transcription'])
def nms_reference(request):
  """The NMS reference: torchvision itself (skipped where it does not load), and the transcription of its
  CPU kernel (tests/structures/reference_nms.py), which needs torch only."""
  pytest.importorskip('torch')
  if request.param == 'torchvision':
    return _TorchvisionNms(_torchvision_ops())
  from tests.structures import reference_nms  # pylint: disable=g-import-not-at-top
  return reference_nms


def random_boxes(rng: np.random.Generator, n: int, size: float = 100.0, max_side: float = 40.0) -> np.ndarray:
  """[n, 4] float32 xyxy boxes inside [0, size]^2 with positive sides."""
  xy = rng.uniform(0, size - max_side, (n, 2))
  wh = rng.uniform(0.5, max_side, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
