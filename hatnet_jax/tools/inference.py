"""What the command-line tools (predict, attention_maps, export) share: finding and loading weights, the
model's settings, class names, and the evaluation transform.

Weights are one of
  * a directory written by `python -m hatnet_jax.tools.convert` (an orbax checkpoint of {'params': ...}),
  * a training checkpoint WORKDIR/checkpoints/STEP/state (or WORKDIR/checkpoints/STEP),
  * a training workdir WORKDIR or WORKDIR/checkpoints (its latest checkpoint).
From a training workdir the model settings (config.model: name and variant fields, image size, mean/std,
...) are read back from the config the trainer recorded in DIR/run.json, and the class names from its dataset, so
`--weights=WORKDIR` alone is enough; flags override them.

Imports of tensorflow, orbax and tensorboard happen inside the functions.
"""
import ast
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
CLASS_NAMES_FILE = 'class_names.txt'  # one name per line, in a workdir or next to converted weights


class UserError(Exception):
  """A mistake the user can fix (bad path, wrong model); the command lines print it without a traceback."""


@dataclasses.dataclass
class Settings:
  """Model and preprocessing settings of a set of weights."""
  model: str = 'hatnet_tiny'
  model_overrides: dict = dataclasses.field(default_factory=dict)
  num_classes: int | None = None
  image_size: int = 224
  eval_crop_ratio: float = 0.875
  interpolation: str = 'bicubic'
  antialias: bool = True
  mean: tuple = IMAGENET_MEAN
  std: tuple = IMAGENET_STD
  dataset: str | None = None  # the training run's config.data (for its class names)
  data_dir: str | None = None
  manual_dir: str | None = None

  def data_config(self):
    """The `config.data` fields that `hatnet_jax.data.classification.transforms.EvalCrop` reads."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict(dict(image_size=int(self.image_size), eval_crop_ratio=float(self.eval_crop_ratio),
                                          interpolation=self.interpolation, antialias=bool(self.antialias)))


# ---------------------------------------------------------------------------------------------------------
# Weights

_HELP_WEIGHTS = ('--weights takes a directory written by `python -m hatnet_jax.tools.convert`, a training checkpoint '
                 'WORKDIR/checkpoints/STEP/state, or a training workdir WORKDIR (its latest checkpoint)')


def _is_orbax(path: str) -> bool:
  return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f))
                                     for f in ('_CHECKPOINT_METADATA', '_METADATA', 'manifest.ocdbt'))


def _steps(checkpoints_dir: str) -> list[int]:
  if not os.path.isdir(checkpoints_dir):
    return []
  return sorted(int(d) for d in os.listdir(checkpoints_dir)
                if d.isdigit() and os.path.isdir(os.path.join(checkpoints_dir, d, 'state')))


def resolve_weights(path: str) -> tuple[str, str | None]:
  """(the orbax directory holding {'params'}, the training workdir it belongs to or None)."""
  p = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(p):
    raise UserError(f'--weights {path}: no such directory. {_HELP_WEIGHTS}.')
  if not os.path.isdir(p):
    raise UserError(f'--weights {path} is a file. {_HELP_WEIGHTS}'
                    + ('; convert a PyTorch .pth first with python -m hatnet_jax.tools.convert '
                       '--model=MODEL --input=FILE.pth --output=DIR' if p.endswith(('.pth', '.pt')) else '') + '.')
  # WORKDIR/checkpoints/STEP/state, WORKDIR/checkpoints/STEP, WORKDIR/checkpoints, WORKDIR
  if os.path.basename(p) == 'state' and _is_orbax(p):
    ckdir = os.path.dirname(os.path.dirname(p))
    return p, os.path.dirname(ckdir) if os.path.basename(ckdir) == 'checkpoints' else None
  if _is_orbax(os.path.join(p, 'state')):
    ckdir = os.path.dirname(p)
    return os.path.join(p, 'state'), os.path.dirname(ckdir) if os.path.basename(ckdir) == 'checkpoints' else None
  for ckdir, workdir in ((p, os.path.dirname(p)), (os.path.join(p, 'checkpoints'), p)):
    steps = _steps(ckdir)
    if steps:
      return os.path.join(ckdir, str(steps[-1]), 'state'), workdir
  if _is_orbax(p):
    return p, None
  found = sorted(os.listdir(p))[:10]
  raise UserError(f'--weights {path} holds no checkpoint (it contains: {", ".join(found) or "nothing"}). '
                  f'{_HELP_WEIGHTS}, e.g. {os.path.join(p, "checkpoints", "STEP", "state")}.')


def _saved_params_tree(path: str) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    tree = checkpoint._tree(ocp.PyTreeCheckpointer().metadata(path))  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'--weights: cannot read the orbax checkpoint {path}: {e}. {_HELP_WEIGHTS}.') from e
  if not isinstance(tree, dict) or 'params' not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise UserError(f'--weights: {path} is not a checkpoint of {{"params": ...}} (top-level keys: {keys}). '
                    f'{_HELP_WEIGHTS}.')
  return tree['params']


def saved_param_shape(path: str, *keys: str) -> tuple[int, ...] | None:
  """The shape of params/<keys...> in the orbax checkpoint `path` (read from its metadata), or None."""
  node = _saved_params_tree(path)
  for key in keys:
    node = node.get(key) if isinstance(node, dict) else None
  return tuple(int(n) for n in node.shape) if hasattr(node, 'shape') else None


def checkpoint_num_classes(path: str) -> int | None:
  """The classifier size stored in the checkpoint (params/head/kernel)."""
  shape = saved_param_shape(path, 'head', 'kernel')
  return shape[-1] if shape else None


def create_model(settings: Settings, **kwargs):
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  try:
    return models.create(settings.model, num_classes=settings.num_classes, **settings.model_overrides, **kwargs)
  except (ValueError, TypeError) as e:
    raise UserError(f'cannot build the model: {e}') from e


def load_variables(model, path: str) -> dict:
  """{'params': ...} of `model` from the orbax checkpoint `path`; every parameter must be there."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  try:
    params = checkpoint.load_params(path, zeros, require_all=True)
  except ValueError as e:
    raise UserError(f'{e}\nGive the settings the weights were trained with: --model, --model_overrides or '
                    f'--config (a training config file), or pass the training workdir as --weights.') from e
  return {'params': params}


# ---------------------------------------------------------------------------------------------------------
# Settings

def _literal(value):
  if isinstance(value, str):
    try:
      return ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return value
  return value


def run_hparams(workdir: str) -> dict[str, Any]:
  """The config a training run recorded in DIR/run.json (flattened: {'model.name': ..., 'data.image_size':
  ...}), or {}."""
  from hatnet_jax.training import run_record  # pylint: disable=g-import-not-at-top
  record = run_record.read(workdir) if workdir else None
  return dict((record or {}).get('hparams') or {})


def settings_from_flat(flat: dict[str, Any], settings: Settings | None = None) -> Settings:
  """Settings from a flattened config (trainer hparams or a ConfigDict flattened by monitor.hparams)."""
  s = settings or Settings()
  if flat.get('model.name'):
    s.model = flat['model.name']
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(models.Variant)}
  overrides = {k.split('.', 1)[1]: _literal(v) for k, v in flat.items()
               if k.startswith('model.') and k.split('.', 1)[1] in fields}
  if overrides:
    s.model_overrides = overrides
  for field, key in (('image_size', 'data.image_size'), ('eval_crop_ratio', 'data.eval_crop_ratio'),
                     ('interpolation', 'data.interpolation'), ('antialias', 'data.antialias'), ('mean', 'data.mean'),
                     ('std', 'data.std'), ('dataset', 'data.dataset'), ('data_dir', 'data.data_dir'),
                     ('manual_dir', 'data.manual_dir')):
    if key in flat and flat[key] not in ('', None):
      setattr(s, field, _literal(flat[key]))
  return s


def load_config_file(spec: str):
  """A training config file `path[:variant]` (e.g. configs/digits.py:tiny) -> its ConfigDict."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(':')
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise UserError(f'--config {spec}: no such file (a training config, e.g. configs/digits.py)')
  root = os.path.dirname(os.path.dirname(path))  # configs/x.py imports `from configs import default`
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location('_hatnet_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def resolve_settings(args, weights_path: str, workdir: str | None) -> Settings:
  """Settings: the run's logged config (workdir), then --config, then explicit flags; num_classes from the
  checkpoint."""
  s = Settings()
  s = settings_from_flat(run_hparams(workdir), s) if workdir else s
  if getattr(args, 'config', None):
    from hatnet_jax.training import monitor  # pylint: disable=g-import-not-at-top
    s = settings_from_flat(monitor.hparams(load_config_file(args.config)), s)
  if getattr(args, 'model', None):
    s.model = args.model
  if getattr(args, 'model_overrides', None):
    try:
      s.model_overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as e:
      raise UserError(f'--model_overrides must be JSON, e.g. \'{{"dims": [32, 64, 96, 128]}}\': {e}') from e
  if getattr(args, 'image_size', None):
    s.image_size = int(args.image_size)
  s.num_classes = checkpoint_num_classes(weights_path)
  if s.num_classes is None:
    raise UserError(f'--weights: {weights_path} has no params/head/kernel; is it a HAT-Net checkpoint?')
  return s


# ---------------------------------------------------------------------------------------------------------
# Class names

def imagenet_class_names() -> list[str] | None:
  """ImageNet-1k names in label order, from what tensorflow-datasets ships (without importing it).

  Human-readable names ('tench', 'goldfish', ...; the first synonym) from the SI-Score dataset's copy of the
  ImageNet label list; else the WordNet ids (n01440764, ...) of TFDS's imagenet2012 labels.txt."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('tensorflow_datasets')
  if spec is None or not spec.submodule_search_locations:
    return None
  root = list(spec.submodule_search_locations)[0]
  path = os.path.join(root, 'datasets', 'siscore', 'labels.py')
  if os.path.isfile(path):
    try:
      tree = ast.parse(open(path, encoding='utf-8').read())
      for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == 'IMAGENET_LABELS_LIST' for t in node.targets):
          names = ast.literal_eval(node.value)
          if len(names) == 1000:
            return [n.split(',')[0].strip() for n in names]
    except (OSError, SyntaxError, ValueError):
      pass
  for rel in (('datasets', 'imagenet2012', 'labels.txt'), ('image_classification', 'imagenet2012_labels.txt')):
    path = os.path.join(root, *rel)
    if os.path.isfile(path):
      names = [line.strip() for line in open(path, encoding='utf-8') if line.strip()]
      if len(names) == 1000:
        return names
  return None


def read_class_names(path: str) -> list[str]:
  """A class-name file: one name per line, or a JSON list."""
  try:
    text = open(path, encoding='utf-8').read()
  except OSError as e:
    raise UserError(f'--class_names {path}: {e.strerror}') from e
  if text.lstrip().startswith('['):
    return [str(n) for n in json.loads(text)]
  return [line.strip() for line in text.splitlines() if line.strip()]


def _dataset_class_names(s: Settings) -> list[str] | None:
  """The training dataset's ClassLabel names, from its TFDS metadata (nothing is downloaded or prepared)."""
  if not s.dataset:
    return None
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data.classification import sources  # pylint: disable=g-import-not-at-top
    d = ml_collections.ConfigDict(dict(dataset=s.dataset, data_dir=s.data_dir, manual_dir=s.manual_dir))
    info = sources.get_builder(d).info
    _, label_key = sources.feature_keys(info.features, info.supervised_keys)
    names = list(info.features[label_key].names or [])
    return names or None
  except Exception:  # pylint: disable=broad-except
    return None


def class_names(s: Settings, *, names_file: str | None = None, weights_path: str | None = None,
                workdir: str | None = None) -> tuple[list[str], str]:
  """(one name per class, where they came from). Order: --class_names, class_names.txt in the workdir or
  next to the weights, the training run's dataset, ImageNet's names for 1000 classes, else the indices."""
  n = s.num_classes
  candidates = []
  if names_file:
    candidates.append((lambda: read_class_names(names_file), names_file))
  for d in (workdir, weights_path, os.path.dirname(weights_path) if weights_path else None):
    if d and os.path.isfile(os.path.join(d, CLASS_NAMES_FILE)):
      f = os.path.join(d, CLASS_NAMES_FILE)
      candidates.append((lambda f=f: read_class_names(f), f))
  candidates.append((lambda: _dataset_class_names(s), f'the dataset {s.dataset}'))
  if n == 1000:
    candidates.append((imagenet_class_names, 'ImageNet-1k (tensorflow-datasets)'))
  for get, source in candidates:
    names = get()
    if names is None:
      continue
    if len(names) != n:
      if source == names_file:
        raise UserError(f'--class_names {names_file} has {len(names)} names; the model has {n} classes')
      continue
    return names, source
  return [str(i) for i in range(n)], 'class indices (no names known; pass --class_names=FILE)'


# ---------------------------------------------------------------------------------------------------------
# Images

def quiet_tensorflow():
  """Before tensorflow is imported: keep its C++ INFO/WARNING lines off the terminal."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def hide_accelerators_from_tensorflow():
  """tf ops run on the CPU; keep TensorFlow off the GPUs/TPUs that JAX uses."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(image files, [(name, problem)]): directories are searched recursively for image extensions;
  files named explicitly are taken whatever their extension."""
  files, problems = [], []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(root, f) for root, _, names in os.walk(item) for f in names
                     if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        problems.append((item, f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in this directory'))
      files.extend(found)
    elif os.path.isfile(item):
      files.append(item)
    else:
      problems.append((item, 'no such file or directory'))
  return files, problems


class Preprocessor:
  """Encoded image bytes -> uint8 [S, S, 3]: exactly the training run's eval transform
  (`hatnet_jax.data.classification.transforms.EvalCrop`: shorter side to S / eval_crop_ratio, center crop, antialiased
  bicubic), in TF ops on the CPU. Normalisation (`normalize`) happens in JAX."""

  def __init__(self, s: Settings):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data.classification import transforms  # pylint: disable=g-import-not-at-top
    hide_accelerators_from_tensorflow()
    self.settings = s
    crop = transforms.EvalCrop(s.data_config())
    self._fn = tf.function(crop, input_signature=[tf.TensorSpec([], tf.string)])
    self._tf = tf

  def __call__(self, data: bytes) -> np.ndarray:
    return self._fn(self._tf.constant(data)).numpy()

  def load(self, path: str) -> np.ndarray:
    """Raises OSError or ValueError (with the reason) if the file cannot be read or decoded."""
    with open(path, 'rb') as f:
      data = f.read()
    if not data:
      raise ValueError('empty file')
    try:
      return self(data)
    except self._tf.errors.OpError as e:
      lines = [l.strip() for l in str(e.message).splitlines()]
      lines = [l for l in lines if l and not l.startswith(('Graph execution error', 'Detected at node', '[[', 'File '))]
      raise ValueError(f'not a decodable image ({(lines[0] if lines else type(e).__name__)[:200]})') from e


def normalize(images: np.ndarray, s: Settings) -> np.ndarray:
  """uint8 [..., 3] -> (x / 255 - mean) / std, float32 (as hatnet_jax.data.classification.augment.normalize)."""
  mean = np.asarray(s.mean, np.float32) * 255.0
  std = np.asarray(s.std, np.float32) * 255.0
  return (images.astype(np.float32) - mean) / std


def eval_resize_to(s: Settings) -> int:
  return int(math.floor(s.image_size / float(s.eval_crop_ratio) + 1e-6))
