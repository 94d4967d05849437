"""Where the COCO 2017 files are in a manual dir: unpacked folders or the official zips, side by side.

    <manual_dir>/train2017/*.jpg              or <manual_dir>/train2017.zip   (members train2017/*.jpg)
    <manual_dir>/val2017/*.jpg                or <manual_dir>/val2017.zip     (members val2017/*.jpg)
    <manual_dir>/annotations/instances_train2017.json and instances_val2017.json
                                              or <manual_dir>/annotations_trainval2017.zip
                                                 (members annotations/instances_{train,val}2017.json)

Each piece is found on its own (e.g. unpacked annotations next to the image zips). `locate` raises a
`LayoutError` saying what was expected and what the directory holds.
"""
import os
import zipfile

SPLITS = {'train': 'train2017', 'validation': 'val2017'}
ANNOTATIONS_ZIP = 'annotations_trainval2017.zip'
LAYOUT = ('train2017/ (or train2017.zip), val2017/ (or val2017.zip), annotations/instances_train2017.json and '
          'annotations/instances_val2017.json (or annotations_trainval2017.zip), as downloaded from '
          'https://cocodataset.org/#download')


class LayoutError(FileNotFoundError):
  pass


def annotation_member(split):
  return f'annotations/instances_{SPLITS[split]}.json'


class ImageFiles:
  """The image files of one split: a folder or a zip; `names()` (file names), `read(name)` (bytes),
  `where(name)` (a path for messages)."""

  def __init__(self, path, folder):
    self.path, self.folder = path, folder
    self._zip = None
    self._names = None

  @property
  def is_zip(self):
    return self.path.endswith('.zip')

  def names(self):
    if self._names is None:
      if self.is_zip:
        prefix = self.folder + '/'
        self._names = {n[len(prefix):] for n in self._zipfile().namelist()
                       if n.startswith(prefix) and len(n) > len(prefix) and not n.endswith('/')}
      else:
        self._names = set(os.listdir(self.path))
    return self._names

  def _zipfile(self):
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.path)
    return self._zip

  def read(self, name):
    if self.is_zip:
      return self._zipfile().read(f'{self.folder}/{name}')
    with open(os.path.join(self.path, name), 'rb') as f:
      return f.read()

  def where(self, name):
    return f'{self.path}:{self.folder}/{name}' if self.is_zip else os.path.join(self.path, name)


class Layout:
  """The located files: `images[split]` (ImageFiles), `annotation_path(split)`, `read_annotations(split)`."""

  def __init__(self, manual_dir, images, annotations):
    self.manual_dir, self.images, self._annotations = manual_dir, images, annotations

  def annotation_path(self, split):
    path = self._annotations[split]
    return f'{path}:{annotation_member(split)}' if path.endswith('.zip') else path

  def read_annotations(self, split):
    path = self._annotations[split]
    if path.endswith('.zip'):
      with zipfile.ZipFile(path) as z:
        return z.read(annotation_member(split))
    with open(path, 'rb') as f:
      return f.read()


def _listing(manual_dir, limit=12):
  try:
    names = sorted(os.listdir(manual_dir))
  except OSError:
    return 'nothing (not a readable directory)'
  if not names:
    return 'nothing (empty)'
  shown = [n + ('/' if os.path.isdir(os.path.join(manual_dir, n)) else '') for n in names[:limit]]
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(shown) + more


def _zip_has(path, member):
  try:
    with zipfile.ZipFile(path) as z:
      return member in set(z.namelist())
  except zipfile.BadZipFile as e:
    raise LayoutError(f'coco: {path} is not a readable zip ({e}); download it again') from e


def locate(manual_dir):
  """The COCO 2017 files of `manual_dir` as a `Layout`; a `LayoutError` names what is missing."""
  if not manual_dir or not os.path.isdir(manual_dir):
    raise LayoutError(f'coco: manual dir {manual_dir!r} does not exist. Expected there: {LAYOUT}')
  missing, images, annotations = [], {}, {}
  ann_zip = os.path.join(manual_dir, ANNOTATIONS_ZIP)
  for split, folder in SPLITS.items():
    unpacked, packed = os.path.join(manual_dir, folder), os.path.join(manual_dir, folder + '.zip')
    if os.path.isdir(unpacked):
      images[split] = ImageFiles(unpacked, folder)
    elif os.path.isfile(packed):
      images[split] = ImageFiles(packed, folder)
    else:
      missing.append(f'{folder}/ or {folder}.zip')
    json_path = os.path.join(manual_dir, annotation_member(split))
    if os.path.isfile(json_path):
      annotations[split] = json_path
    elif os.path.isfile(ann_zip) and _zip_has(ann_zip, annotation_member(split)):
      annotations[split] = ann_zip
    else:
      missing.append(f'{annotation_member(split)} (or inside {ANNOTATIONS_ZIP})')
  if missing:
    raise LayoutError(f'coco: {manual_dir} lacks {"; ".join(missing)}. It holds: {_listing(manual_dir)}. '
                      f'Expected layout: {LAYOUT}')
  return Layout(manual_dir, images, annotations)
