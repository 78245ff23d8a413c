"""The paper's data augmentation (section 4.1), on the device inside the jitted step.

The host sends the stored S x S uint8 images (S = 256 in the paper) and nothing else.
Training takes from each a random P x P patch (P = 224), reflects it with
probability 1/2, and adds the PCA colour shift sum_i alpha_i lambda_i p_i with
alpha_i ~ N(0, 0.1); evaluation takes the centre patch, or the paper's ten
patches (four corners and the centre, and their reflections). Then the mean is
subtracted (the mean pixel, or the paper's mean image at the patch's place) and
the result divided by the std.

Every draw is keyed by (seed, step, example), the example's row in the global
batch: a resumed run draws what the uninterrupted one would have drawn, and the
draws do not depend on how the batch is split between devices.
"""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alexnet_jax.data import imagenet_color


@dataclasses.dataclass(frozen=True, eq=False)
class Augmentation:
  """What the device does to the stored images; built once from the config (`from_config`)."""
  image_size: int                 # P, the patch's side
  mean: np.ndarray                # [3] (mean pixel) or [S, S, 3] (mean image), 0-255 units
  std: np.ndarray                 # [3]
  pca_std: float = 0.0            # std of the alpha_i; 0: no colour shift
  pca_eigval: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3))
  pca_eigvec: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))  # columns
  # Off, training takes the centre patch (as evaluation does) and never reflects it: the
  # paper's comparison without "this scheme", under which it "would have suffered from
  # substantial overfitting".
  random_patches: bool = True
  reflections: bool = True


def from_config(config, mean_image: np.ndarray | None = None) -> Augmentation:
  """The config's augmentation; with `config.subtract_mean='image'`, `mean_image` [S, S, 3]."""
  mean = np.asarray(config.mean_rgb, np.float32)
  if config.subtract_mean == 'image':
    if mean_image is None:   # np.asarray(None) would be a NaN mean: every input NaN
      raise ValueError("subtract_mean='image' needs the mean image (python -m alexnet_jax.commands.color_stats).")
    mean = np.asarray(mean_image, np.float32)
  return Augmentation(image_size=config.image_size, mean=mean,
                      std=np.asarray(config.std_rgb, np.float32),
                      pca_std=float(config.pca_lighting_std),
                      pca_eigval=np.asarray(config.pca_eigval, np.float32),
                      pca_eigvec=np.asarray(config.pca_eigvec, np.float32),
                      random_patches=getattr(config, 'random_patches', True),
                      reflections=getattr(config, 'reflections', True))


def imagenet(image_size: int) -> Augmentation:
  """The augmentation of `owt`'s config (configs/alexnet.py's ImageNet statistics) for
  `image_size` patches: what the benchmarks time, without loading a config."""
  return from_config(types.SimpleNamespace(
      image_size=image_size, subtract_mean='pixel', mean_rgb=imagenet_color.MEAN_RGB,
      std_rgb=imagenet_color.STD_RGB, pca_lighting_std=imagenet_color.PCA_LIGHTING_STD,
      pca_eigval=imagenet_color.PCA_EIGVAL, pca_eigvec=imagenet_color.PCA_EIGVEC))


def example_keys(seed: int, step, rows) -> jax.Array:
  """One key per example: (seed, step, the example's row in the global batch)."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.vmap(lambda row: jax.random.fold_in(step_key, row))(rows)


def train_images(aug: Augmentation, images, keys) -> jax.Array:
  """uint8 [B, S, S, 3] -> float32 [B, P, P, 3]: random patch, reflection, colour shift,
  mean and std (each draw that `aug` turns off left out, the others unchanged)."""
  return jax.vmap(lambda image, key: _train_image(aug, image, key))(images, keys)


def _train_image(aug: Augmentation, image, key):
  offset_key, flip_key, light_key = jax.random.split(key, 3)
  slack = image.shape[0] - aug.image_size
  if aug.random_patches:
    y, x = jax.random.randint(offset_key, (2,), 0, slack + 1)
  else:
    y = x = slack // 2
  patch = _patch(aug, image, y, x)
  if aug.reflections:
    patch = jnp.where(jax.random.bernoulli(flip_key), patch[:, ::-1], patch)
  if aug.pca_std > 0:
    alpha = aug.pca_std * jax.random.normal(light_key, (3,))
    patch = patch + jnp.asarray(aug.pca_eigvec) @ (alpha * jnp.asarray(aug.pca_eigval))
  return patch / jnp.asarray(aug.std)


def eval_images(aug: Augmentation, images, ten_patches: bool) -> jax.Array:
  """uint8 [B, S, S, 3] -> float32 [B, P, P, 3] (the centre patch), or with `ten_patches`
  [B, 10, P, P, 3]: the four corner patches and the centre one, then their reflections."""
  slack = images.shape[1] - aug.image_size
  if not ten_patches:
    centre = jax.vmap(lambda image: _patch(aug, image, slack // 2, slack // 2))(images)
    return centre / jnp.asarray(aug.std)
  offsets = ((0, 0), (0, slack), (slack, 0), (slack, slack), (slack // 2, slack // 2))
  patches = jnp.stack([jax.vmap(lambda image: _patch(aug, image, y, x))(images)  # noqa: B023
                       for y, x in offsets], axis=1)
  return jnp.concatenate([patches, patches[:, :, :, ::-1]], axis=1) / jnp.asarray(aug.std)


def _patch(aug: Augmentation, image, y, x):
  """The P x P patch at (y, x) of one S x S image, minus the mean there, in float32."""
  size = aug.image_size
  patch = lax.dynamic_slice(image, (y, x, 0), (size, size, 3)).astype(jnp.float32)
  mean = jnp.asarray(aug.mean)
  if mean.ndim == 3:   # the mean image: the same patch of it
    mean = lax.dynamic_slice(mean, (y, x, 0), (size, size, 3))
  return patch - mean
