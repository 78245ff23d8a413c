"""AlexNet's layers, each with the ways of computing it that the model's options pick.

- `LocalResponseNorm`: the paper's normalisation across channels; its gradient by autodiff
  or written out by hand.
- `TowerConv`: a convolution whose channels split into towers; its input and output one
  array, or a list of the towers' arrays; conv1 optionally on space-to-depth blocks.
- `max_pool`: the overlapping 3x3 / stride-2 max pool, by XLA's reduce_window or as the
  max of nine strided slices whose gradient needs no scatter.

Every way computes the same function (tests/test_layers.py); which is faster depends on
the platform (BENCHMARKS.md, "The step's rewrites").
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LRN_GRADIENTS = ('autodiff', 'by_hand')
CONV1_FORMS = ('direct', 'space_to_depth')
MAX_POOLS = ('reduce_window', 'slices')
TOWER_LAYOUTS = ('joined', 'apart')


class LocalResponseNorm(nn.Module):
  """The paper's response normalisation across adjacent channels (section 3.3).

  b = a / (bias + alpha * sum_{|j-i| <= depth_radius} a_j^2) ** beta

  alpha is not divided by the window size: this is TensorFlow's
  `tf.nn.local_response_normalization`, not Caffe's or PyTorch's LRN. With
  `groups` > 1 the window stops at group boundaries, as on the paper's two
  GPUs, where each GPU normalised only the maps it held.

  `window_sum` picks how the sum over the window is computed; the numbers are
  the same. 'auto' picks, when the step is compiled, the faster one for the
  platform (BENCHMARKS.md): a 0/1 band-matrix product on CPU, where XLA runs
  it and its gradient 2 to 3 times faster than a windowed sum, and a windowed
  sum elsewhere (on an H100 the whole paper step is 1.24x faster with it).

  `gradient`: 'autodiff' differentiates the forward pass; 'by_hand' computes
  dx = g t^-beta - 2 alpha beta x window_sum(g x t^(-beta-1)) from x alone
  (t the denominator's base), in float32, one window sum more and none of
  autodiff's intermediates kept.
  """
  depth_radius: int = 2
  bias: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75
  groups: int = 1
  window_sum: str = 'auto'   # 'auto', 'band_matmul' or 'reduce_window'
  gradient: str = 'autodiff'  # one of LRN_GRADIENTS

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] % self.groups:
      raise ValueError(f'LRN: {x.shape[-1]} channels do not split into {self.groups} groups.')
    if self.window_sum not in ('auto', *_WINDOW_SUMS):
      raise ValueError(f'LRN: unknown window_sum {self.window_sum!r}; choose auto, band_matmul '
                       'or reduce_window.')
    if self.gradient not in LRN_GRADIENTS:
      raise ValueError(f'LRN: unknown gradient {self.gradient!r}; choose one of {LRN_GRADIENTS}.')
    settings = (self.depth_radius, self.bias, self.alpha, self.beta, self.groups,
                self.window_sum)
    if self.gradient == 'by_hand':
      return _lrn_by_hand(settings, x)
    return _lrn(settings, x)


def _lrn(settings, x):
  """The normalisation in float32 (a^2 sums overflow bfloat16's precision), in x's dtype."""
  _, bias, alpha, beta, *_ = settings
  x32 = x.astype(jnp.float32)
  t = bias + alpha * _window_sum(settings, x32 * x32)
  return (x32 * _inverse_power(t, beta)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lrn_by_hand(settings, x):
  return _lrn(settings, x)


def _lrn_by_hand_forward(settings, x):
  return _lrn(settings, x), x


def _lrn_by_hand_backward(settings, x, g):
  _, bias, alpha, beta, *_ = settings
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  t = bias + alpha * _window_sum(settings, x32 * x32)
  t_beta = _inverse_power(t, beta)
  # The window is symmetric: channel j is in i's window exactly when i is in j's.
  spread = _window_sum(settings, g32 * x32 * t_beta / t)
  return ((g32 * t_beta - 2 * alpha * beta * x32 * spread).astype(x.dtype),)


_lrn_by_hand.defvjp(_lrn_by_hand_forward, _lrn_by_hand_backward)


def _window_sum(settings, squares):
  depth_radius, *_, groups, window_sum = settings
  sums = {name: functools.partial(f, depth_radius=depth_radius, groups=groups)
          for name, f in _WINDOW_SUMS.items()}
  if window_sum == 'auto':
    return lax.platform_dependent(squares, cpu=sums['band_matmul'],
                                  default=sums['reduce_window'])
  return sums[window_sum](squares)


def _band_matmul_window_sum(squares, depth_radius: int, groups: int):
  """The window sum as one product with a 0/1 band matrix; HIGHEST keeps it float32."""
  return jnp.matmul(squares, _window_matrix(squares.shape[-1], depth_radius, groups),
                    precision=lax.Precision.HIGHEST)


def _reduce_window_sum(squares, depth_radius: int, groups: int):
  """The window sum as a sliding sum along the channels of each group."""
  *batch, channels = squares.shape
  grouped = squares.reshape(*batch, groups, channels // groups)
  window = (1,) * (grouped.ndim - 1) + (2 * depth_radius + 1,)
  padding = [(0, 0)] * (grouped.ndim - 1) + [(depth_radius, depth_radius)]
  summed = lax.reduce_window(grouped, 0.0, lax.add, window, (1,) * grouped.ndim, padding)
  return summed.reshape(squares.shape)


_WINDOW_SUMS = {'band_matmul': _band_matmul_window_sum, 'reduce_window': _reduce_window_sum}


def _window_matrix(channels: int, depth_radius: int, groups: int) -> np.ndarray:
  """M[j, i] = 1 where channel j is in channel i's window, within one group."""
  i = np.arange(channels)
  group = i // (channels // groups)
  near = np.abs(i[:, None] - i[None, :]) <= depth_radius
  return (near & (group[:, None] == group[None, :])).astype(np.float32)


def _inverse_power(t, beta: float):
  """t ** -beta; for the paper's beta = 3/4 as rsqrt(t) * sqrt(rsqrt(t)), cheaper than pow."""
  if beta == 0.75:
    r = lax.rsqrt(t)
    return r * jnp.sqrt(r)
  return t ** -beta


class TowerConv(nn.Module):
  """A convolution whose channels split into `towers` that never see each other.

  The function and parameters of `nn.Conv(feature_group_count=towers)` (a
  kernel of shape (k, k, in / towers, features) and a bias), computed as one
  convolution per tower, as the paper's two GPUs did. Written this way because
  XLA's CPU backend runs a grouped convolution and its gradients 4 to 6 times
  slower than the same convolutions split (`python -m alexnet_jax.commands.benchmark`,
  BENCHMARKS.md).

  `apart` = 0: the input and output are one array, the towers' outputs
  concatenated. `apart` = n: the output is a list of n arrays, the features
  split in n, each from its own slice of the kernel, and the input an array or
  a list: a grouped layer takes one list entry per tower, any other layer the
  entries joined. The towers' maps then stay apart between grouped layers,
  where the joined form splits and concatenates them.

  `space_to_depth`: the convolution computed at stride 1 on the input's
  stride x stride blocks (`space_to_depth_conv`).
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  towers: int = 1
  apart: int = 0
  space_to_depth: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    k, towers = self.kernel_size, self.towers
    in_features = sum(t.shape[-1] for t in inputs)
    kernel = self.param('kernel', self.kernel_init, (k, k, in_features // towers, self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    *inputs, kernel, bias = nn.dtypes.promote_dtype(*inputs, kernel, bias, dtype=self.dtype)
    if towers > 1:
      if self.apart not in (0, towers):
        raise ValueError(f'TowerConv: {towers} towers cannot come out as {self.apart} parts.')
      if len(inputs) == 1:
        inputs = jnp.split(inputs[0], towers, axis=-1)
      pairs = list(zip(inputs, jnp.split(kernel, towers, axis=-1)))
    else:
      whole = inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, axis=-1)
      pairs = [(whole, part) for part in jnp.split(kernel, max(self.apart, 1), axis=-1)]
    outputs = [self._convolve(x_part, kernel_part) + bias_part
               for (x_part, kernel_part), bias_part in zip(pairs, jnp.split(bias, len(pairs)))]
    if self.apart:
      return outputs
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)

  def _convolve(self, x, kernel):
    if self.space_to_depth:
      return space_to_depth_conv(x, kernel, self.stride, self.padding)
    return lax.conv_general_dilated(x, kernel, (self.stride, self.stride),
                                    [(self.padding, self.padding)] * 2,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def space_to_depth_conv(x, kernel, stride: int, padding: int):
  """The convolution of NHWC `x` with HWIO `kernel` at `stride` and `padding` on both sides,
  computed at stride 1 on the image's stride x stride blocks.

  A strided convolution of few input channels (conv1: 3) makes a poor matrix for the tensor
  cores; on 4x4 blocks conv1 has 48 channels and a 3x3 kernel, the 11x11 one padded with
  zeros to 12x12 and cut into the same blocks (MLPerf's JAX ResNet fed TPUs this way). The
  image is padded to a whole number of blocks: the left padding as given, the right as the
  blocks need, the extra taps landing on the kernel's zeros.
  """
  s, k = stride, kernel.shape[0]
  batch, height, width, channels = x.shape
  blocks = -(-k // s)   # of the kernel, along each side
  out_h, out_w = ((side + 2 * padding - k) // s + 1 for side in (height, width))
  rows, cols = out_h + blocks - 1, out_w + blocks - 1
  # lax.pad, not jnp.pad: a negative right padding (a stride above padding + 1) crops.
  x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (padding, s * rows - height - padding, 0),
                                          (padding, s * cols - width - padding, 0), (0, 0, 0)])
  x = x.reshape(batch, rows, s, cols, s, channels).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(batch, rows, cols, s * s * channels)
  kernel = jnp.pad(kernel, [(0, blocks * s - k), (0, blocks * s - k), (0, 0), (0, 0)])
  kernel = kernel.reshape(blocks, s, blocks, s, *kernel.shape[2:]).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(blocks, blocks, s * s * kernel.shape[-2], kernel.shape[-1])
  return lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def max_pool(x, window: int, stride: int, how: str = 'reduce_window'):
  """Max pooling of NHWC `x` over `window` x `window` patches `stride` apart, no padding.

  'reduce_window': XLA's own, whose gradient XLA lowers to a scatter (in bfloat16 a
  compare-and-swap loop on GPUs). 'slices': the maximum of the window*window strided slices,
  with the same values and the same gradient: it goes to the first maximum of each window,
  XLA's rule for ties, added up from interior-padded slices, without a scatter.
  """
  if how == 'reduce_window':
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')
  if how != 'slices':
    raise ValueError(f'max_pool: unknown form {how!r}; choose one of {MAX_POOLS}.')
  return _max_pool_slices(window, stride, x.shape[1], x.shape[2], x)


def _pooled_side(side: int, window: int, stride: int) -> int:
  return (side - window) // stride + 1


def _window_slice(x, dy: int, dx: int, window: int, stride: int):
  """The input of every window's (dy, dx) tap: a strided slice the shape of the output."""
  out_h, out_w = (_pooled_side(side, window, stride) for side in x.shape[1:3])
  return lax.slice(x, (0, dy, dx, 0),
                   (x.shape[0], dy + stride * (out_h - 1) + 1, dx + stride * (out_w - 1) + 1,
                    x.shape[3]), (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _max_pool_slices(window, stride, height, width, x):
  return _max_and_index(window, stride, height, width, x)[0]


def _max_and_index(window, stride, height, width, x):
  """The windows' maxima, and the int8 tap (dy * window + dx) of each one's first maximum."""
  del height, width   # x's own; the backward pass needs them
  best = _window_slice(x, 0, 0, window, stride)
  index = jnp.zeros(best.shape, jnp.int8)
  for tap in range(1, window * window):
    candidate = _window_slice(x, *divmod(tap, window), window, stride)
    # Strictly greater: on a tie the first maximum stays. A NaN takes the window and keeps it.
    better = (candidate > best) | jnp.isnan(candidate)
    best = jnp.where(better, candidate, best)
    index = jnp.where(better, jnp.int8(tap), index)
  return best, index


def _max_pool_backward(window, stride, height, width, index, g):
  """Each window's gradient at its first maximum's tap, the taps' interior-padded terms
  added in float32 (or float64) whatever the dtype: up to four windows share an input."""
  total_dtype = jnp.promote_types(g.dtype, jnp.float32)
  g_total, zero = g.astype(total_dtype), jnp.zeros((), total_dtype)
  out_h, out_w = g.shape[1:3]
  total = None
  for tap in range(window * window):
    dy, dx = divmod(tap, window)
    term = lax.pad(jnp.where(index == tap, g_total, zero), zero, [
        (0, 0, 0), (dy, height - dy - stride * (out_h - 1) - 1, stride - 1),
        (dx, width - dx - stride * (out_w - 1) - 1, stride - 1), (0, 0, 0)])
    total = term if total is None else total + term
  return (total.astype(g.dtype),)


_max_pool_slices.defvjp(_max_and_index, _max_pool_backward)
