"""Fine-tuning pays: a run on four Imagenette classes started from a checkpoint trained on the
six others reaches a lower validation error after one epoch than the same run from scratch
(README, "Fine-tuning", measures the same at full scale)."""

import pytest

from alexnet_jax import train
from configs import alexnet
from tests.conftest import IMAGENETTE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f'needs real JPEGs in {IMAGENETTE} (the '
                       'shared data folder beside the checkout)')]
SIX = ('n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079', 'n03394916')
FOUR = ('n03417042', 'n03425413', 'n03445777', 'n03888257')


def _folder(root, classes, train_images, val_images):
  """ROOT/{train,val}/<wnid>/: the first images of each class, linked from Imagenette."""
  for split, count in (('train', train_images), ('val', val_images)):
    for wnid in classes:
      (root / split / wnid).mkdir(parents=True)
      for source in sorted((IMAGENETTE / split / wnid).iterdir())[:count]:
        (root / split / wnid / source.name).symlink_to(source)
  return root


def _config(root, epochs, **overrides):
  """The Imagenette config (half width, 96x96 patches of 110x110 squares), read from a folder."""
  config = alexnet.get_config('imagenette')
  config.dataset, config.num_epochs = f'image_folder:{root}', epochs
  config.data_workers, config.log_every_steps = 0, 10
  for key, value in overrides.items():
    config[key] = value
  return config


def test_one_epoch_from_a_trained_checkpoint_beats_one_from_scratch(tmp_path):
  six = _folder(tmp_path / 'six', SIX, train_images=300, val_images=50)
  four = _folder(tmp_path / 'four', FOUR, train_images=300, val_images=100)
  pretrained = str(tmp_path / 'pretrained')
  train.train_and_evaluate(_config(six, epochs=8), pretrained)
  tuned = train.train_and_evaluate(_config(four, 1, init_from=pretrained), str(tmp_path / 'tuned'))
  scratch = train.train_and_evaluate(_config(four, 1), str(tmp_path / 'scratch'))
  assert tuned['examples'] == scratch['examples'] == 400
  print(f"after one epoch: from the checkpoint {tuned['top1_error']:.3f}, from scratch "
        f"{scratch['top1_error']:.3f}")
  # One epoch from scratch stays at chance loss (ln 4); with seeds 0 to 3 the checkpoint's
  # run ended 6 to 12 points of error and 0.01 to 0.12 of loss below it.
  assert tuned['top1_error'] < scratch['top1_error'] - 0.03, (tuned, scratch)
  assert tuned['loss'] < scratch['loss'], (tuned, scratch)
