"""The model against the paper's numbers, and its rewrites against today's forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config_checks, errors, models, train
from alexnet_jax.data import augment
from alexnet_jax.parallel import placement, steps
from tests.conftest import tiny_config
from tests.reference import ALL_REWRITES


@pytest.mark.parametrize('variant, expected', [('paper', 60_965_224), ('owt', 61_100_840)])
def test_parameter_counts_at_1000_classes(variant, expected):
  model = models.AlexNet(num_classes=1000, variant=variant)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  assert models.count_params(shapes['params']) == expected


def test_paper_layer_shapes_are_the_papers():
  model = models.AlexNet(variant='paper')
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))['params']
  kernels = {name: shapes[name]['kernel'].shape for name in shapes}
  assert kernels['conv1'] == (11, 11, 3, 96)
  assert kernels['conv2'] == (5, 5, 48, 256)      # each kernel sees its own tower's 48 maps
  assert kernels['conv3'] == (3, 3, 256, 384)     # sees both towers
  assert kernels['conv4'] == (3, 3, 192, 384)
  assert kernels['conv5'] == (3, 3, 192, 256)
  assert kernels['fc6'] == (6 * 6 * 256, 4096)


def _narrow(variant='paper', **kwargs):
  return models.AlexNet(num_classes=10, variant=variant, width=0.125, **kwargs)


def test_output_shape_and_dtypes_in_bfloat16():
  model = _narrow(dtype=jnp.bfloat16)
  images = jnp.ones((3, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_grouped_convolutions_see_only_their_own_tower():
  """Changing tower 0's conv1 kernels changes no conv2 output of tower 1."""
  model = _narrow()
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
  params = model.init(jax.random.key(0), images, train=False)['params']

  def conv2_out(p):
    _, state = model.apply({'params': p}, images, train=False,
                           capture_intermediates=lambda mdl, _: mdl.name == 'conv2')
    return np.asarray(state['intermediates']['conv2']['__call__'][0])

  conv1 = params['conv1']['kernel']
  half = conv1.shape[-1] // 2
  changed = {**params, 'conv1': {**params['conv1'],
                                 'kernel': conv1.at[..., :half].multiply(3.0)}}
  before, after = conv2_out(params), conv2_out(changed)
  towers = before.shape[-1] // 2
  np.testing.assert_array_equal(before[..., towers:], after[..., towers:])
  assert np.abs(before[..., :towers] - after[..., :towers]).max() > 1e-3


BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')   # the paper's section 5


@pytest.mark.parametrize('initialization, biases, stddevs', [
    # The paper: N(0, 0.01) weights, biases of 1 in conv2, conv4, conv5, fc6 and fc7.
    ('paper', lambda name: 1.0 if name in BIAS_ONE else 0.0, lambda name: 0.01),
    # BVLC Caffe's reference AlexNet (train_val.prototxt): biases of 0.1 there, fc6/fc7 0.005.
    ('caffe', lambda name: 0.1 if name in BIAS_ONE else 0.0,
     lambda name: 0.005 if name in ('fc6', 'fc7') else 0.01),
])
def test_paper_and_caffe_initialisations(initialization, biases, stddevs):
  model = models.AlexNet(variant='paper', width=0.5, initialization=initialization)
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)['params']
  assert sorted(params) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
  for name, layer in params.items():
    np.testing.assert_array_equal(np.asarray(layer['bias']), np.float32(biases(name)), name)
    assert abs(float(jnp.std(layer['kernel'])) / stddevs(name) - 1) < 0.05, name
    assert abs(float(jnp.mean(layer['kernel']))) < 0.1 * stddevs(name), name


def test_each_variant_starts_from_the_initialisation_it_documents():
  from configs import alexnet
  assert alexnet.get_config('paper').initialization == 'caffe'
  assert alexnet.get_config('owt').initialization == 'pytorch'
  # owt: PyTorch's default, uniform in +-1/sqrt(fan_in) (variance 1/(3 fan_in)), biases 0.
  params = models.AlexNet(variant='owt', width=0.5).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)['params']
  for name, layer in params.items():
    kernel = np.asarray(layer['kernel'])
    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
    assert bound * 0.95 < np.abs(kernel).max() <= bound * (1 + 1e-6), name   # float32 rounding
    np.testing.assert_array_equal(np.asarray(layer['bias']), 0.0)


def test_dropout_only_in_training():
  model = _narrow()
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3)) * 50
  variables = model.init(jax.random.key(0), images, train=False)
  eval_a = model.apply(variables, images, train=False)
  eval_b = model.apply(variables, images, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  train_b = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(3)})
  assert np.abs(np.asarray(train_a - train_b)).max() > 0


def test_every_option_keeps_the_parameters_names_and_shapes():
  """Checkpoints and torchvision's weights load whatever the options."""
  assert set(ALL_REWRITES) == set(models.OPTIONS)
  assert all(ALL_REWRITES[field] in choices[1:] for field, choices in models.OPTIONS.items())
  for variant in models.VARIANTS:
    shapes = [jax.eval_shape(lambda m=m: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                 train=False))
              for m in (_narrow(variant), _narrow(variant, **ALL_REWRITES))]
    assert jax.tree.map(lambda x: x.shape, shapes[0]) == jax.tree.map(lambda x: x.shape,
                                                                      shapes[1])


def test_unknown_options_are_refused_at_start_up_with_their_choices():
  config = tiny_config()
  config.conv1, config.tower_layout = 'winograd', 'mixed'
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.check(config, num_devices=1)
  assert "--config.conv1='winograd' is unknown: choose one of ('direct', 'space_to_depth')" in str(
      raised.value)
  assert "--config.tower_layout='mixed' is unknown: choose one of ('joined', 'apart')" in str(
      raised.value)
  with pytest.raises(ValueError, match=r"unknown max_pool 'scatter'.*'reduce_window', 'slices'"):
    _narrow(max_pool='scatter').init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)


@functools.cache
def _float64_step(model: str, options: tuple) -> tuple:
  """(loss, parameters before, parameters after) of one train step of the tiny config, dropout
  on, computed in float64: an order of summation that differs shows below float32's rounding,
  in which the parameters and their gradients are kept."""
  config = tiny_config()
  config.model = model
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 73, 73, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  with jax.enable_x64(True):
    mesh = placement.make_mesh(jax.devices()[:1])
    net = train.create_model(config, 10).clone(dtype=jnp.float64, **dict(options))
    state = train.create_train_state(config, net, mesh)
    init = jax.device_get(state.params)
    step = steps.make_train_step(net, augment.from_config(config), config.seed, mesh)
    state, metrics = step(state, placement.shard_batch(batch, mesh))
    return float(metrics['loss']), init, jax.device_get(state.params)


def _rewritten_step_against_todays(model: str, options: dict, tolerance: float):
  """Each parameter after the step with `options` against today's: equal, or within
  `tolerance` of the largest change of that parameter in today's step."""
  loss, init, ref = _float64_step(model, ())
  ours_loss, _, ours = _float64_step(model, tuple(sorted(options.items())))
  assert ours_loss == loss
  for (path, a), b, start in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref),
                                 jax.tree.leaves(init), strict=True):
    assert a.dtype == np.float32 and np.abs(b - start).max() > 0, path
    if tolerance:
      assert np.abs(a - b).max() <= tolerance * np.abs(b - start).max(), path
    else:
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_owt_step_with_conv1_on_blocks_and_the_pool_of_slices_is_todays_bit_for_bit():
  _rewritten_step_against_todays('owt', {'conv1': 'space_to_depth', 'max_pool': 'slices'}, 0)


def test_paper_step_with_every_rewrite_is_todays_within_float32_lrn_rounding():
  """LRN's gradient is float32 either way (by autodiff or by hand), and rounds differently."""
  _rewritten_step_against_todays('paper', ALL_REWRITES, 1e-3)


@pytest.mark.slow
def test_paper_step_with_every_rewrite_but_lrns_is_todays_bit_for_bit():
  _rewritten_step_against_todays(
      'paper', {k: v for k, v in ALL_REWRITES.items() if k != 'lrn_gradient'}, 0)
