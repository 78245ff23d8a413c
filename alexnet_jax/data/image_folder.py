"""A folder of images: `image_folder:ROOT`, trained directly or prepared into a store.

The layout is ROOT/<split>/<class>/<image>, e.g. ROOT/train/n01440764/x.JPEG
and ROOT/val/n01440764/y.JPEG (the eval split `validation` is also looked for
as `val`). A class's index is its folder's place in the sorted list of the
train split's class folders; with `imagenet_wnid_labels`, folders named by
ImageNet wnids take their ImageNet-1k index instead, so a model trained on
ImageNet evaluates on the folder with the right labels.

JPEG, PNG, GIF and BMP files are read (told by their content), grayscale,
CMYK and alpha turned into RGB, 16-bit samples scaled to 8 bits (`decode.py`).
A file that is empty, truncated (no end marker), not an image at all, not a
regular file (a FIFO, a link to a device) or over the byte cap is logged with
its path, counted and left out when the folder is listed, before any epoch is
laid out (`image_files.py`); a class folder that is a link to another one
already listed is left out the same way. An image over the pixel cap, or a
JPEG cut short inside, is found when decoded and skipped then.
"""

import concurrent.futures
import dataclasses
import logging
import pathlib

import numpy as np

from alexnet_jax.data import decode, image_files, image_source
from alexnet_jax.errors import DataError

PREFIX = 'image_folder:'
_SPLIT_FOLDERS = {'validation': ('validation', 'val'), 'test': ('test',), 'train': ('train',)}


def _split_folder(root: pathlib.Path, split: str) -> pathlib.Path:
  names = _SPLIT_FOLDERS.get(split, (split,))
  for name in names:
    if (root / name).is_dir():
      return root / name
  present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  raise DataError(
      f'The image folder {root} has no folder for the {split!r} split (looked for '
      f'{", ".join(names)}; it holds {present or "no folders"}). Lay it out as '
      'ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, or set --config.train_split '
      'and --config.eval_split to its folder names.')


def _class_indices(train_folder: pathlib.Path, imagenet_wnids: bool) -> tuple[dict, list]:
  """{folder name: class index} and the names of all classes by index."""
  classes = sorted(p.name for p in train_folder.iterdir() if p.is_dir())
  if not classes:
    raise DataError(f'{train_folder} holds no class folders: put each class\'s images in '
                    f'{train_folder}/<class name>/.')
  if not imagenet_wnids:
    return {name: i for i, name in enumerate(classes)}, classes
  import tensorflow_datasets as tfds   # its ImageNet metadata; TensorFlow is not imported
  wnids = tfds.builder('imagenet2012').info.features['label'].names
  unknown = sorted(set(classes) - set(wnids))
  if unknown:
    raise DataError(f'--config.imagenet_wnid_labels is set but {len(unknown)} class folders of '
                    f'{train_folder} are not ImageNet wnids (e.g. {unknown[:3]}): rename them '
                    'or set --config.imagenet_wnid_labels=false.')
  return {name: wnids.index(name) for name in classes}, list(wnids)


def list_images(folder: pathlib.Path, class_index: dict,
                limits: image_files.Limits = image_files.Limits()) -> tuple[np.ndarray, np.ndarray]:
  """(paths, labels) of the readable images of one split, in sorted order."""
  candidates, seen = [], {}
  for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
    if class_dir.name not in class_index:
      raise DataError(f'{class_dir} is a class the train split does not have: add it to the '
                      'train split or remove it.')
    identity = (class_dir.stat().st_dev, class_dir.stat().st_ino)
    if identity in seen:   # its images would be listed twice, under two labels
      logging.warning('Skipping %s: a link to %s, whose images are listed already.', class_dir,
                      seen[identity])
      continue
    seen[identity] = class_dir
    candidates += [(str(p), class_index[class_dir.name]) for p in sorted(class_dir.iterdir())
                   if p.suffix.lower() in image_files.SUFFIXES]
  present = {label for _, label in candidates}
  empty = sorted(name for name, label in class_index.items() if label not in present)
  if empty:
    logging.warning('%s has no images of %d of the %d classes (%s%s); they are evaluated or '
                    'trained on without them.', folder, len(empty), len(class_index),
                    ', '.join(empty[:5]), ', ...' if len(empty) > 5 else '')
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    reasons = list(pool.map(lambda path: image_files.why_unreadable(path, limits),
                            [path for path, _ in candidates]))
  kept = [c for c, reason in zip(candidates, reasons) if reason is None]
  for (path, _), reason in zip(candidates, reasons):
    if reason is not None:
      logging.warning('Skipping %s: %s.', path, reason)
  if len(kept) < len(candidates):
    logging.warning('%s: %d of %d images skipped as unreadable (listed above).', folder,
                    len(candidates) - len(kept), len(candidates))
  if not kept:
    raise DataError(f'{folder} holds no readable images ({", ".join(image_files.SUFFIXES)}).')
  paths, labels = zip(*kept)
  return np.asarray(paths), np.asarray(labels, np.int32)


@dataclasses.dataclass(frozen=True)
class Folder:
  """The readable images of a folder's splits, and its class names by index."""
  root: pathlib.Path
  classes: tuple[str, ...]
  splits: dict   # {split name: (paths, labels)}


def open_folder(root, split_names, imagenet_wnid_labels: bool = False,
                limits: image_files.Limits = image_files.Limits()) -> Folder:
  """Lists `split_names` (the first one is the train split, which names the classes)."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f'{PREFIX}{root}: {root} is not a folder.')
  train_folder = _split_folder(root, split_names[0])
  class_index, class_names = _class_indices(train_folder, imagenet_wnid_labels)
  splits = {name: list_images(_split_folder(root, name), class_index, limits)
            for name in split_names}
  return Folder(root, tuple(class_names), splits)


class FolderSplit(image_source.ImageSource):
  """One split of a folder: its images by index, each file decoded and resized as it is read.

  A file that passed the listing's checks but still fails to decode is logged
  with its path and replaced by the next image of the split, so that batches
  keep their size; a prepared store leaves such files out instead.
  """

  def __init__(self, paths, labels, size: int, limits: image_files.Limits = image_files.Limits()):
    self._paths, self._labels, self.image_size, self._limits = paths, labels, size, limits

  def __len__(self):
    return len(self._paths)

  def read_into(self, index, out):
    for offset in range(len(self._paths)):
      i = (index + offset) % len(self._paths)
      try:
        out[...] = decode.square(image_files.read(self._paths[i], self._limits), self.image_size,
                                 self._limits.max_pixels)
      except (OSError, decode.UndecodableImage) as e:
        logging.warning('Skipping %s: %s; the next image is read in its place.',
                        self._paths[i], e)
        continue
      return self._labels[i]
    raise DataError(f'No image of {pathlib.Path(self._paths[0]).parent.parent} can be decoded.')
