"""The layer table of `python -m alexnet_jax.commands.activation_stats`: firing and dead units."""

import jax
import numpy as np
import pytest

from alexnet_jax import models, train
from alexnet_jax.commands import activation_stats
from alexnet_jax.data import augment
from alexnet_jax.parallel import placement
from tests.conftest import tiny_config


def test_a_layer_whose_biases_silence_it_shows_all_its_units_dead():
  config = tiny_config()
  model = train.create_model(config, num_classes=10)
  params = jax.device_get(train.create_train_state(config, model, placement.make_mesh()).params)
  params['fc7']['bias'] = np.full_like(params['fc7']['bias'], -100.0)   # fc7 never fires
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 73, 73, 3), np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  rows, logits_std, loss = activation_stats.layer_table(model, params, augment.from_config(config),
                                                        batch)
  table = {name: (std, mean, firing, dead) for name, std, mean, firing, dead in rows}
  assert list(table) == list(models.LAYERS)
  assert table['fc7'][2] == 0 and table['fc7'][3] == 1   # nothing fires: every unit dead
  assert 0.2 < table['conv1'][2] < 0.8 and table['conv1'][3] == 0
  # Nothing reaches fc8 but its zero biases: every logit 0, the loss ln 10.
  assert logits_std == 0 and loss == pytest.approx(np.log(10), rel=1e-5)
