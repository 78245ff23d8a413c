"""Image folders: real ImageNet JPEGs from ../shared/data/imagenette, grayscale, PNG with
alpha, a truncated file, wnid labels, and a short training run on them."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data, errors, train
from alexnet_jax.commands.evaluate_workdirs import evaluate_workdirs
from tests.conftest import IMAGENETTE, tiny_config

pytestmark = pytest.mark.skipif(
    not IMAGENETTE.is_dir(),
    reason=f'needs real JPEGs in {IMAGENETTE} (the shared data folder beside the checkout)')

CLASSES = ('n01440764', 'n02102040')   # tench (ImageNet-1k index 0), springer spaniel (217)


def _grayscale_jpeg(class_dir):
  for path in sorted(class_dir.iterdir()):
    with Image.open(path) as image:
      if image.mode == 'L':
        return path
  raise AssertionError(f'no grayscale JPEG in {class_dir}')


@pytest.fixture
def folder(tmp_path):
  """ROOT/train/<wnid>/ with 5 real JPEGs each, a PNG with alpha and a truncated JPEG;
  ROOT/val/<wnid>/ with 2 real JPEGs each, the first class's first one grayscale."""
  root = tmp_path / 'images'
  for wnid in CLASSES:
    sources = sorted((IMAGENETTE / 'train' / wnid).iterdir())[:5]
    (root / 'train' / wnid).mkdir(parents=True)
    for path in sources:
      shutil.copy(path, root / 'train' / wnid / path.name)
    (root / 'val' / wnid).mkdir(parents=True)
    val = sorted((IMAGENETTE / 'val' / wnid).iterdir())[:2]
    if wnid == CLASSES[0]:
      val[0] = _grayscale_jpeg(IMAGENETTE / 'val' / wnid)
    for i, path in enumerate(val):
      shutil.copy(path, root / 'val' / wnid / f'{i}_{path.name}')
  rgba = np.random.default_rng(0).integers(0, 256, (90, 120, 4), np.uint8)
  Image.fromarray(rgba, 'RGBA').save(root / 'train' / CLASSES[1] / 'alpha.png')
  whole = (root / 'train' / CLASSES[0] / sorted(p.name for p in
                                                (root / 'train' / CLASSES[0]).iterdir())[0])
  (root / 'train' / CLASSES[0] / 'truncated.JPEG').write_bytes(whole.read_bytes()[:3000])
  (root / 'train' / CLASSES[0] / 'notes.txt').write_text('not an image, not read')
  return root


def _config(root, **overrides):
  config = tiny_config()
  config.dataset = f'image_folder:{root}'
  config.global_batch_size = 4
  config.update(overrides)
  return config


def test_folder_is_read_with_sorted_labels_grayscale_as_rgb_and_bad_files_skipped(folder, caplog):
  caplog.set_level(logging.WARNING)
  dataset = data.create(_config(folder), global_batch_size=4)
  assert 'truncated.JPEG' in caplog.text and 'end marker' in caplog.text
  assert dataset.num_classes == 2
  assert dataset.train_examples == 11   # 10 JPEGs and the PNG; the truncated file is left out
  batch = next(dataset.train_batches(0))
  assert batch.image.shape == (4, 73, 73, 3) and batch.image.dtype == np.uint8
  eval_batches = list(dataset.eval_batches())
  images = np.concatenate([b.image for b in eval_batches])
  labels = np.concatenate([b.label for b in eval_batches])
  mask = np.concatenate([b.mask for b in eval_batches])
  assert dataset.eval_examples == 4 and mask.sum() == 4
  np.testing.assert_array_equal(labels[mask == 1], [0, 0, 1, 1])
  gray = images[0].astype(int)   # the grayscale JPEG, its one channel copied to R, G and B
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
  assert gray.std() > 5
  in_colour = images[2].astype(int)
  assert not np.array_equal(in_colour[..., 0], in_colour[..., 1])


def test_wnid_folders_take_their_imagenet_index(folder):
  dataset = data.create(_config(folder, imagenet_wnid_labels=True), global_batch_size=4)
  assert dataset.num_classes == 1000
  labels = np.concatenate([b.label[b.mask == 1] for b in dataset.eval_batches()])
  np.testing.assert_array_equal(labels, [0, 0, 217, 217])


def test_missing_split_folder_is_named(folder):
  shutil.rmtree(folder / 'val')
  with pytest.raises(errors.DataError, match="no folder for the 'validation' split"):
    data.create(_config(folder), global_batch_size=4)


def test_training_on_the_folder_then_ten_patch_evaluation_of_every_image(folder, tmp_path):
  config = _config(folder, num_train_steps=3, eval_every_steps=3)
  workdir = str(tmp_path / 'work')
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics['examples'] == 4 and np.isfinite(metrics['loss'])
  config.eval_ten_crop = True
  ten = evaluate_workdirs(config, [workdir], 'latest')[workdir]
  assert ten['examples'] == 4 and ten['step'] == 3 and np.isfinite(ten['loss'])
