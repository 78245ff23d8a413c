"""The full-size paper network learns from its first steps on real images.

With the paper's exact initialisation (biases of 1) the first updates blow the
loss up to 10 times chance and leave the network dead at chance (ln 10) after
it: the flat loss Caffe's reference model reports. The default initialisation
(Caffe's: biases of 0.1, fc6/fc7 weights N(0, 0.005)) fits a fixed batch of
real images within 30 steps. Both on 224x224 patches of the full-size
two-tower network, with the paper's SGD at its learning rate of 0.01.
"""

import math

import jax
import numpy as np
import pytest

from alexnet_jax import train
from alexnet_jax.data import augment, decode
from alexnet_jax.parallel import placement, steps
from configs import alexnet
from tests.conftest import IMAGENETTE

pytestmark = pytest.mark.skipif(
    not IMAGENETTE.is_dir(),
    reason=f'needs real JPEGs in {IMAGENETTE} (the shared data folder beside the checkout)')
CHANCE = math.log(10)


def _fixed_batch(per_class: int = 2) -> dict:
  """The first `per_class` training images of each of Imagenette's 10 classes, 224x224."""
  classes = sorted(p.name for p in (IMAGENETTE / 'train').iterdir())
  images, labels = [], []
  for label, name in enumerate(classes):
    for path in sorted((IMAGENETTE / 'train' / name).iterdir())[:per_class]:
      images.append(decode.square(path.read_bytes(), 224))
      labels.append(label)
  return {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}


def _losses(initialization: str, num_steps: int) -> list[float]:
  config = alexnet.get_config('paper')   # full size, the paper's SGD, lr 0.01
  config.initialization = initialization
  config.resize_size = config.image_size   # the batch is already 224x224: flips only
  mesh = placement.make_mesh(jax.devices()[:1])
  model = train.create_model(config, num_classes=10)
  state = train.create_train_state(config, model, mesh)
  step = steps.make_train_step(model, augment.from_config(config), config.seed, mesh)
  batch = placement.shard_batch(_fixed_batch(), mesh)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return losses


@pytest.mark.slow   # 30 steps of the full-size network on the CPU: about 50 s each
def test_the_default_initialisation_fits_a_fixed_real_batch():
  losses = _losses(alexnet.get_config('paper').initialization, 30)
  assert max(losses[:10]) < 1.1 * CHANCE, losses      # no blow-up at the start
  assert min(losses) < 0.75 * CHANCE, losses          # and it learns


@pytest.mark.slow
def test_the_papers_biases_of_one_blow_up_then_stay_at_chance():
  losses = _losses('paper', 30)
  assert max(losses[:10]) > 4 * CHANCE, losses
  assert min(losses) > 0.95 * CHANCE, losses
