"""The paper's choices as switches (README, "The paper's claims"): each changes the function as
the paper describes its alternative, checked against TensorFlow's ops; at their defaults the
steps are the same programs as before the switches existed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import config_checks, errors, models, optim
from alexnet_jax.data import augment
from alexnet_jax.loop import saved_state
from tests.conftest import tiny_config
from tests.fixtures import make_default_steps

NARROW = dict(num_classes=10, width=0.125)


def test_the_default_steps_are_the_programs_recorded_before_the_switches():
  """The same jaxpr is the same computation, bit for bit, on any machine."""
  recorded = json.loads(make_default_steps.FILE.read_text())
  assert make_default_steps.digests() == recorded


def _conv1_and_conv2(model: models.AlexNet, side: int):
  """(conv1's output before its activation, conv2's, conv2's parameters) on random images."""
  images = jax.random.normal(jax.random.key(1), (2, side, side, 3)) * 60
  variables = model.init(jax.random.key(0), images, train=False)
  _, state = model.apply(variables, images, train=False, capture_intermediates=True)
  inter = state['intermediates']
  return (np.asarray(inter['conv1']['__call__'][0]), np.asarray(inter['conv2']['__call__'][0]),
          jax.device_get(variables['params']['conv2']), inter)


def _tf_conv2(x, params, groups: int):
  """conv2 (5x5, padding 2) by TensorFlow, one convolution per tower."""
  parts = zip(np.split(x, groups, axis=-1), np.split(params['kernel'], groups, axis=-1))
  out = [tf.nn.conv2d(xi, ki, 1, [[0, 0], [2, 2], [2, 2], [0, 0]]).numpy() for xi, ki in parts]
  return np.concatenate(out, axis=-1) + params['bias']


def _tf_pool(x, window: int):
  return tf.nn.max_pool2d(x, window, 2, 'VALID').numpy()


def _tf_lrn(x, groups: int):
  return np.concatenate([tf.nn.local_response_normalization(part, 2, 2.0, 1e-4, 0.75).numpy()
                         for part in np.split(x, groups, axis=-1)], axis=-1)


@pytest.mark.parametrize('variant, activation, lrn', [
    ('owt', 'tanh', None), ('paper', 'tanh', None), ('paper', 'relu', False),
    ('owt', 'relu', True), ('paper_one_tower', 'relu', None)])
def test_activation_and_lrn_between_conv1_and_conv2(variant, activation, lrn):
  model = models.AlexNet(variant=variant, activation=activation, lrn=lrn, **NARROW)
  conv1, conv2, params, inter = _conv1_and_conv2(model, 64)
  x = np.tanh(conv1) if activation == 'tanh' else np.maximum(conv1, 0)
  towers = models.VARIANTS[variant].towers
  with_lrn = models.VARIANTS[variant].lrn if lrn is None else lrn
  assert any('LocalResponseNorm' in name for name in inter) == with_lrn
  if with_lrn:
    x = _tf_lrn(x, towers)
  expected = _tf_conv2(_tf_pool(x, 3), params, models.VARIANTS[variant].conv_groups[1])
  np.testing.assert_allclose(conv2, expected, rtol=2e-5, atol=2e-4)


def test_tanh_units_in_the_fully_connected_layers():
  model = models.AlexNet(variant='owt', activation='tanh', **NARROW)
  _, _, _, inter = _conv1_and_conv2(model, 64)
  fc6, fc7 = (np.asarray(inter[name]['__call__'][0]) for name in ('fc6', 'fc7'))
  params = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                     train=False)['params'])
  np.testing.assert_allclose(fc7, np.tanh(fc6) @ params['fc7']['kernel'] + params['fc7']['bias'],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('side, conv1_side', [(64, 15), (68, 16), (224, 55)])
def test_non_overlapping_pools_are_2x2_stride_2_with_the_same_map_sizes(side, conv1_side):
  """On an even side a 2x2 pool makes one more row than the 3x3 one: the last is left out."""
  model = models.AlexNet(variant='owt', pooling='non_overlapping', **NARROW)
  conv1, conv2, params, _ = _conv1_and_conv2(model, side)
  assert conv1.shape[1] == conv1_side
  overlapping = models.AlexNet(variant='owt', **NARROW)
  assert conv2.shape == _conv1_and_conv2(overlapping, side)[1].shape
  kept = 2 * ((conv1_side - 3) // 2 + 1)
  pooled = _tf_pool(np.maximum(conv1, 0)[:, :kept, :kept], 2)
  np.testing.assert_allclose(conv2, _tf_conv2(pooled, params, 1), rtol=2e-5, atol=2e-4)
  if side == 224:
    shapes = jax.eval_shape(lambda: models.AlexNet(variant='owt', pooling='non_overlapping').init(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert shapes['params']['fc6']['kernel'].shape == (256 * 6 * 6, 4096)


def test_the_one_tower_net_has_half_the_kernels_but_conv5_and_the_fc_layers():
  """The paper's footnote: conv5 and the fully connected layers are not halved."""
  def kernels(variant):
    shapes = jax.eval_shape(lambda: models.AlexNet(variant=variant).init(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))['params']
    return {name: shapes[name]['kernel'].shape for name in models.LAYERS}
  two, one = kernels('paper'), kernels('paper_one_tower')
  assert [one[f'conv{i}'][-1] * 2 for i in range(1, 5)] == [two[f'conv{i}'][-1]
                                                             for i in range(1, 5)]
  assert one['conv1'] == (11, 11, 3, 48) and one['conv2'] == (5, 5, 48, 128)
  assert one['conv3'] == (3, 3, 128, 192) and one['conv4'] == (3, 3, 192, 192)
  assert one['conv5'] == (3, 3, 192, 256) == two['conv5'][:2] + (192, 256)
  assert all(one[name] == two[name] for name in ('fc6', 'fc7', 'fc8'))


def test_training_patches_are_the_centre_unreflected_with_both_switches_off():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 73, 73, 3), dtype=np.uint8)
  keys = augment.example_keys(0, 3, np.arange(16))
  base = dict(image_size=64, mean=np.zeros(3, np.float32), std=np.ones(3, np.float32))
  centre = images[:, 4:68, 4:68].astype(np.float32)

  fixed = augment.train_images(
      augment.Augmentation(**base, random_patches=False, reflections=False), images, keys)
  np.testing.assert_array_equal(fixed, centre)

  mirrored = np.asarray(augment.train_images(
      augment.Augmentation(**base, random_patches=False), images, keys))
  is_centre = [np.array_equal(m, c) for m, c in zip(mirrored, centre)]
  is_mirror = [np.array_equal(m, c[:, ::-1]) for m, c in zip(mirrored, centre)]
  assert all(a or b for a, b in zip(is_centre, is_mirror)) and any(is_centre) and any(is_mirror)

  moved = np.asarray(augment.train_images(
      augment.Augmentation(**base, reflections=False), images, keys))
  assert sum(not np.array_equal(m, c) for m, c in zip(moved, centre)) >= 14


def test_unknown_choices_are_refused_at_start_up_with_their_choices():
  config = tiny_config()
  config.activation, config.pooling, config.model = 'sigmoid', 'average', 'one_tower'
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.check(config, num_devices=1)
  message = str(raised.value)
  assert "--config.activation='sigmoid' is unknown: choose one of ('relu', 'tanh')" in message
  assert ("--config.pooling='average' is unknown: choose one of ('overlapping', "
          "'non_overlapping')") in message
  assert "'owt', 'paper', 'paper_one_tower'" in message


def test_a_checkpoint_records_the_choices_and_a_resume_with_others_is_refused():
  config = tiny_config()
  saved = json.loads(json.dumps(_loop_state(config).saved()))   # as the checkpoint's JSON
  assert saved['choices'] == {'activation': 'relu', 'lrn': False, 'pooling': 'overlapping',
                              'dropout_rate': 0.5, 'random_patches': True,
                              'reflections': True, 'pca_lighting_std': 0.1}
  _loop_state(config).load(saved)   # the same choices resume
  config.activation, config.lrn = 'tanh', False   # the demo's owt has no LRN: the same
  with pytest.raises(errors.ConfigError) as raised:
    _loop_state(config).load(saved)
  assert "activation='relu'; the config says activation='tanh'" in str(raised.value)
  assert '--config.activation=relu' in str(raised.value)
  del saved['choices']   # a checkpoint of an earlier version resumes under any choices
  _loop_state(config).load(saved)


def _loop_state(config) -> saved_state.LoopState:
  return saved_state.LoopState(optim.PlateauController(0.01, **config.plateau),
                               choices=saved_state.choices(config))
