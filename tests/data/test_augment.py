"""The device augmentation (alexnet_jax/data/augment.py) against NumPy slices and Pillow crops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax.data import augment

STORED, PATCH = 20, 16
EIGVAL = np.array([55.46, 4.794, 1.148], np.float32)
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]], np.float32)


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, STORED, STORED, 3), np.uint8)


def _plain(**kwargs):
  """Patches as they are: no mean, no std, no colour shift."""
  return augment.Augmentation(image_size=PATCH, mean=np.zeros(3, np.float32),
                              std=np.ones(3, np.float32), **kwargs)


def _train(aug, images, step=0, rows=None, seed=0):
  rows = np.arange(len(images)) if rows is None else rows
  keys = augment.example_keys(seed, step, jnp.asarray(rows))
  return np.asarray(jax.jit(augment.train_images, static_argnums=0)(aug, images, keys))


def _find_draw(image, patch):
  """The (y, x, reflected) whose NumPy slice of `image` is `patch`; exactly one must match."""
  matches = [(y, x, flip) for y in range(STORED - PATCH + 1) for x in range(STORED - PATCH + 1)
             for flip in (False, True)
             if np.array_equal(image[y:y + PATCH, x:x + PATCH][:, ::-1 if flip else 1], patch)]
  assert len(matches) == 1, matches
  return matches[0]


def test_training_patches_are_numpy_slices_covering_every_offset_and_half_reflected():
  images = _images(400)
  patches = _train(_plain(), images)
  assert patches.shape == (400, PATCH, PATCH, 3) and patches.dtype == np.float32
  draws = [_find_draw(image, patch.astype(np.uint8)) for image, patch in zip(images, patches)]
  ys, xs, flips = (np.array(d) for d in zip(*draws))
  slack = STORED - PATCH
  assert set(ys) == set(xs) == set(range(slack + 1))   # every allowed offset, none beyond
  assert 0.4 < flips.mean() < 0.6


def test_whole_training_transform_equals_numpy_with_mean_std_and_colour_shift():
  images = _images(300, seed=1)
  mean, std = np.array([120.0, 110.0, 100.0], np.float32), np.array([50.0, 60.0, 70.0], np.float32)
  aug = augment.Augmentation(image_size=PATCH, mean=mean, std=std, pca_std=0.1,
                             pca_eigval=EIGVAL, pca_eigvec=EIGVEC)
  out = _train(aug, images, step=5)
  draws = [_find_draw(image, patch.astype(np.uint8))
           for image, patch in zip(images, _train(_plain(), images, step=5))]
  alphas = []
  for image, (y, x, flip), got in zip(images, draws, out):
    patch = image[y:y + PATCH, x:x + PATCH][:, ::-1 if flip else 1].astype(np.float64)
    shift = (got * std + mean - patch).reshape(-1, 3)
    # One colour shift for the whole image (its direction: the test below).
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=2e-3)
    alpha = np.linalg.solve(EIGVEC, shift[0]) / EIGVAL
    alphas.append(alpha)
    reference = (patch + EIGVEC @ (alpha * EIGVAL) - mean) / std
    np.testing.assert_allclose(got, reference, atol=1e-4)
  alphas = np.array(alphas)
  assert np.all(np.abs(alphas.std(0) - 0.1) < 0.02), alphas.std(0)   # alpha_i ~ N(0, 0.1)
  assert np.all(np.abs(alphas.mean(0)) < 0.03)
  assert np.abs(np.corrcoef(alphas.T)[np.triu_indices(3, 1)]).max() < 0.2


def test_the_colour_shift_lies_along_the_principal_components():
  """With one non-zero eigenvalue, every image's shift is a multiple of that component."""
  images = _images(16, seed=4)
  eigval = np.array([50.0, 0.0, 0.0], np.float32)
  shifted = _train(_plain(pca_std=0.1, pca_eigval=eigval, pca_eigvec=EIGVEC), images, step=5)
  shifts = (shifted - _train(_plain(), images, step=5)).reshape(len(images), -1, 3)
  np.testing.assert_allclose(shifts, np.broadcast_to(shifts[:, :1], shifts.shape), atol=2e-3)
  for shift in shifts[:, 0]:
    np.testing.assert_allclose(np.cross(shift, EIGVEC[:, 0]), 0, atol=1e-3)
  assert np.abs(shifts).max() > 0.5   # the draws are not all zero


def test_mean_image_is_subtracted_at_the_patchs_place():
  images = _images(20, seed=2)
  mean_image = np.random.default_rng(3).uniform(0, 255, (STORED, STORED, 3)).astype(np.float32)
  aug = augment.Augmentation(image_size=PATCH, mean=mean_image, std=np.ones(3, np.float32))
  out = _train(aug, images)
  for image, patch, got in zip(images, _train(_plain(), images), out):
    y, x, flip = _find_draw(image, patch.astype(np.uint8))
    step = -1 if flip else 1
    reference = (image.astype(np.float32) - mean_image)[y:y + PATCH, x:x + PATCH][:, ::step]
    np.testing.assert_allclose(got, reference, atol=1e-4)


def test_draws_depend_on_seed_step_and_row_not_on_how_the_batch_is_split():
  images = _images(8, seed=4)
  whole = _train(_plain(), images, step=3)
  halves = np.concatenate([_train(_plain(), images[:4], step=3, rows=np.arange(4)),
                           _train(_plain(), images[4:], step=3, rows=np.arange(4, 8))])
  np.testing.assert_array_equal(whole, halves)
  assert not np.array_equal(whole, _train(_plain(), images, step=4))
  assert not np.array_equal(whole, _train(_plain(), images, step=3, seed=1))


@pytest.mark.parametrize('stored, patch', [(20, 16), (256, 224)])
def test_ten_patches_are_pillows_corner_and_centre_crops_and_their_reflections(stored, patch):
  images = np.random.default_rng(5).integers(0, 256, (2, stored, stored, 3), np.uint8)
  aug = augment.Augmentation(image_size=patch, mean=np.zeros(3, np.float32),
                             std=np.ones(3, np.float32))
  got = np.asarray(augment.eval_images(aug, images, ten_patches=True))
  centre = np.asarray(augment.eval_images(aug, images, ten_patches=False))
  slack = stored - patch
  boxes = [(0, 0), (slack, 0), (0, slack), (slack, slack), (slack // 2, slack // 2)]  # (left, top)
  assert got.shape == (2, 10, patch, patch, 3)
  for image, patches, middle in zip(images, got, centre):
    pil = Image.fromarray(image)
    crops = [pil.crop((x, y, x + patch, y + patch)) for x, y in boxes]
    crops += [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]
    for i, crop in enumerate(crops):
      np.testing.assert_array_equal(patches[i], np.asarray(crop, np.float32), err_msg=str(i))
    np.testing.assert_array_equal(middle, patches[4])
