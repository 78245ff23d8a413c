"""The layers against TensorFlow's LRN and XLA's own convolution and max pool: every form a
model option picks computes today's function."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax import lax

from alexnet_jax import layers


def _lrn_input(shape, seed=0):
  # Activations of a few tens: large enough that alpha * sum(a^2) is comparable to the bias.
  return np.random.default_rng(seed).normal(0, 40, shape).astype(np.float32)


WINDOW_SUMS = ['auto', 'band_matmul', 'reduce_window']


@pytest.mark.parametrize('window_sum', WINDOW_SUMS)
def test_lrn_matches_tensorflow(window_sum):
  x = _lrn_input((2, 5, 5, 16))
  ours = layers.LocalResponseNorm(window_sum=window_sum).apply({}, jnp.asarray(x))
  ref = tf.nn.local_response_normalization(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
  np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-5)


def _tf_lrn_gradient(x, cotangent, beta=0.75):
  x_tf = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x_tf)
    y = tf.nn.local_response_normalization(x_tf, depth_radius=2, bias=2.0, alpha=1e-4, beta=beta)
  return tape.gradient(y, x_tf, output_gradients=tf.constant(cotangent)).numpy()


@pytest.mark.parametrize('gradient', layers.LRN_GRADIENTS)
@pytest.mark.parametrize('beta', [0.75, 0.5])
@pytest.mark.parametrize('window_sum', WINDOW_SUMS)
def test_lrn_gradient_matches_tensorflow(beta, window_sum, gradient):
  x = _lrn_input((2, 5, 5, 16), seed=3)
  cotangent = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  lrn = layers.LocalResponseNorm(beta=beta, window_sum=window_sum, gradient=gradient)
  _, vjp = jax.vjp(lambda a: lrn.apply({}, a), jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(cotangent))[0]),
                             _tf_lrn_gradient(x, cotangent, beta), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('window_sum', WINDOW_SUMS)
def test_lrn_gradient_by_hand_stops_at_the_tower_boundary(window_sum):
  x = _lrn_input((2, 4, 4, 12), seed=5)
  cotangent = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
  lrn = layers.LocalResponseNorm(groups=2, window_sum=window_sum, gradient='by_hand')
  ours = jax.vjp(lambda a: lrn.apply({}, a), jnp.asarray(x))[1](jnp.asarray(cotangent))[0]
  ref = np.concatenate([_tf_lrn_gradient(h, c) for h, c in zip(np.split(x, 2, axis=-1),
                                                                np.split(cotangent, 2, axis=-1))],
                       axis=-1)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-6)


def test_lrn_gradient_by_hand_in_bfloat16_is_autodiffs_within_its_rounding():
  x = jnp.asarray(_lrn_input((2, 6, 6, 32), seed=7), jnp.bfloat16)
  cotangent = jnp.asarray(np.random.default_rng(8).normal(size=x.shape), jnp.bfloat16)
  grads = {}
  for gradient in layers.LRN_GRADIENTS:
    lrn = layers.LocalResponseNorm(gradient=gradient)
    y, vjp = jax.vjp(lambda a: lrn.apply({}, a), x)
    assert y.dtype == jnp.bfloat16
    grads[gradient] = np.asarray(vjp(cotangent)[0], np.float32)
  ref = grads['autodiff']
  # Both are float32 inside, rounded once to bfloat16 (8 bits): a unit in the last place.
  np.testing.assert_allclose(grads['by_hand'], ref, rtol=2 ** -7, atol=2 ** -7 * np.abs(ref).max())


def test_lrn_on_cpu_compiles_only_the_band_matmul():
  lrn = layers.LocalResponseNorm(groups=2)
  hlo = jax.jit(lambda x: lrn.apply({}, x)).lower(jnp.ones((2, 5, 5, 16))).compile().as_text()
  assert 'dot(' in hlo and 'reduce-window' not in hlo and 'conditional' not in hlo


@pytest.mark.parametrize('window_sum', WINDOW_SUMS)
def test_lrn_with_groups_normalises_each_tower_on_its_own(window_sum):
  x = _lrn_input((2, 4, 4, 12), seed=1)
  ours = layers.LocalResponseNorm(groups=2, window_sum=window_sum).apply({}, jnp.asarray(x))
  ref = np.concatenate([
      tf.nn.local_response_normalization(half, depth_radius=2, bias=2.0, alpha=1e-4,
                                         beta=0.75).numpy()
      for half in np.split(x, 2, axis=-1)], axis=-1)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_tower_conv_is_a_grouped_convolution():
  """Forward and both gradients against XLA's own grouped convolution (feature_group_count)."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 11, 11, 8)), jnp.float32)
  conv = layers.TowerConv(features=6, kernel_size=3, stride=2, padding=1, towers=2,
                          bias_init=jax.nn.initializers.normal(1.0))
  params = conv.init(jax.random.key(0), x)
  assert params['params']['kernel'].shape == (3, 3, 4, 6)

  def reference(params, x):
    return jax.lax.conv_general_dilated(
        x, params['params']['kernel'], (2, 2), [(1, 1), (1, 1)],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2) + params['params']['bias']

  np.testing.assert_allclose(conv.apply(params, x), reference(params, x), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=reference(params, x).shape), jnp.float32)
  ours = jax.vjp(conv.apply, params, x)[1](cotangent)
  ref = jax.vjp(reference, params, x)[1](cotangent)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)




ODD_SIDES = [63, 64, 65, 96, 100, 224, 225, 226, 227]


def _conv1_reference(x, kernel):
  """conv1 as XLA computes it today: 11x11, stride 4, padding 2."""
  return lax.conv_general_dilated(x, kernel, (4, 4), [(2, 2), (2, 2)],
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('side', ODD_SIDES)
def test_space_to_depth_conv1_is_the_strided_convolution(side):
  rng = np.random.default_rng(side)
  x = jnp.asarray(rng.normal(size=(2, side, side + 1, 3)), jnp.float32)   # not square either
  kernel = jnp.asarray(rng.normal(size=(11, 11, 3, 4)) * 0.1, jnp.float32)
  ref, ref_vjp = jax.vjp(jax.jit(_conv1_reference), x, kernel)
  ours, our_vjp = jax.vjp(jax.jit(lambda a, k: layers.space_to_depth_conv(a, k, 4, 2)), x,
                          kernel)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  for a, b in zip(our_vjp(cotangent), ref_vjp(cotangent)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


@pytest.mark.parametrize('stride, padding', [(2, 0), (3, 1), (4, 0), (4, 5)])
def test_space_to_depth_conv_at_other_strides_and_paddings(stride, padding):
  """Blocks that need cropping (padding below stride - 1) or more padding than the kernel."""
  rng = np.random.default_rng(stride * 10 + padding)
  x = jnp.asarray(rng.normal(size=(1, 17, 19, 2)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 2, 3)), jnp.float32)
  ref = lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(layers.space_to_depth_conv(x, kernel, stride, padding), ref,
                             rtol=1e-5, atol=1e-4)


def test_space_to_depth_conv1_in_bfloat16_is_within_its_rounding():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(11, 11, 3, 8)) * 0.1, jnp.bfloat16)
  ref = np.asarray(_conv1_reference(x, kernel), np.float32)
  ours = layers.space_to_depth_conv(x, kernel, 4, 2)
  assert ours.dtype == jnp.bfloat16
  # Each is rounded once to bfloat16 from float32 sums: within two units in the last place.
  np.testing.assert_allclose(np.asarray(ours, np.float32), ref, rtol=2 ** -6,
                             atol=2 ** -7 * np.abs(ref).max())


@pytest.mark.parametrize('towers, parts', [(1, 2), (2, 2)])
def test_tower_conv_apart_returns_the_joined_outputs_split(towers, parts):
  """The same parameters, the same outputs, split into the towers' lists; a grouped layer
  takes its input as a list too, an ungrouped one joins it."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
  kwargs = dict(features=6, kernel_size=3, stride=1, padding=1, towers=towers,
                bias_init=jax.nn.initializers.normal(1.0))
  joined, apart = layers.TowerConv(**kwargs), layers.TowerConv(**kwargs, apart=parts)
  params = joined.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, apart.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape,
                                                                                    params)
  ref, ref_vjp = jax.vjp(joined.apply, params, x)
  ours, our_vjp = jax.vjp(lambda p, a: apart.apply(p, jnp.split(a, 2, axis=-1)), params, x)
  assert len(ours) == parts
  np.testing.assert_allclose(jnp.concatenate(ours, axis=-1), ref, rtol=1e-6, atol=1e-6)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  for a, b in zip(jax.tree.leaves(our_vjp(jnp.split(cotangent, parts, axis=-1))),
                  jax.tree.leaves(ref_vjp(cotangent))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _pools():
  """(today's max pool, the slices' one), each as a function of x, compiled."""
  return [jax.jit(lambda a, how=how: layers.max_pool(a, 3, 2, how)) for how in layers.MAX_POOLS]


@pytest.mark.parametrize('side', ODD_SIDES)
def test_max_pool_of_slices_is_xlas_max_pool_in_float32(side):
  rng = np.random.default_rng(side)
  x = jnp.asarray(rng.normal(size=(2, side, side - 1, 3)), jnp.float32)
  (ref, ref_vjp), (ours, our_vjp) = (jax.vjp(pool, x) for pool in _pools())
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(ref, nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID'))
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  # One window's gradient lands in one place; up to four windows share an input, so the sums
  # of up to four terms may round differently.
  np.testing.assert_allclose(our_vjp(cotangent)[0], ref_vjp(cotangent)[0], rtol=1e-6,
                             atol=1e-6)


def _first_maximum_gradient(x, cotangent):
  """Each window's cotangent added at its first maximum in row-major order, by loops."""
  grad = np.zeros_like(x)
  for b, i, j, c in np.ndindex(cotangent.shape):
    window = x[b, 2 * i:2 * i + 3, 2 * j:2 * j + 3, c]
    dy, dx = np.unravel_index(np.argmax(window), window.shape)   # argmax: the first maximum
    grad[b, 2 * i + dy, 2 * j + dx, c] += cotangent[b, i, j, c]
  return grad


def test_max_pool_of_slices_breaks_ties_as_xla_does():
  """Inputs of three values, so most windows have several maxima: the gradient goes to the
  first, as XLA's own max pool's does and as a loop written out says."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (2, 9, 8, 2)).astype(np.float32)
  cotangent = rng.integers(1, 5, (2, 4, 3, 2)).astype(np.float32)  # sums exact in float32
  ref = _first_maximum_gradient(x, cotangent)
  for pool in _pools():
    y, vjp = jax.vjp(pool, jnp.asarray(x))
    np.testing.assert_array_equal(vjp(jnp.asarray(cotangent))[0], ref)
  assert (x[:, :3, :3] == x[:, :3, :3].max(axis=(1, 2), keepdims=True)).sum() > 2 * 2


def test_max_pool_of_slices_in_bfloat16_is_within_its_rounding():
  """Against XLA's float32 max pool of the same values, rounded: XLA's own bfloat16 gradient
  on the CPU sends some windows' gradients elsewhere than its float32 one does."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 27, 27, 8)), jnp.bfloat16)
  ours, our_vjp = jax.vjp(_pools()[1], x)
  ref, ref_vjp = jax.vjp(_pools()[0], x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(ours, np.float32), ref)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.bfloat16)
  grad = our_vjp(cotangent)[0]
  assert grad.dtype == jnp.bfloat16
  ref_grad = np.asarray(ref_vjp(cotangent.astype(jnp.float32))[0])
  # Up to four terms summed in float32, then rounded once to bfloat16 (8 bits).
  np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=2 ** -8, atol=0)


def test_max_pool_of_slices_keeps_a_nan():
  x = np.zeros((1, 5, 5, 1), np.float32)
  x[0, 1, 1, 0] = np.nan
  y = layers.max_pool(jnp.asarray(x), 3, 2, 'slices')
  assert np.isnan(np.asarray(y)[0, 0, 0, 0])


def test_unknown_forms_are_refused_with_the_choices():
  with pytest.raises(ValueError, match=r"unknown form 'scatter'.*reduce_window"):
    layers.max_pool(jnp.zeros((1, 5, 5, 1)), 3, 2, 'scatter')
  with pytest.raises(ValueError, match=r"unknown gradient 'numeric'.*by_hand"):
    layers.LocalResponseNorm(gradient='numeric').apply({}, jnp.zeros((1, 2, 2, 4)))
