"""The paper's update written out by hand: the independent reference of the train step's tests."""

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import models, train
from alexnet_jax.data import augment
from alexnet_jax.parallel import steps


def reference_sgd(config, params, batches):
  """The paper's update written out, on one device, with the one-device network, on the
  patches the augmentation cuts from the global batch (tests/data/test_augment.py checks them)."""
  model = train.create_model(config, 10)
  aug = augment.from_config(config)
  augment_seed = steps.step_seeds(config.seed)[1]
  params = jax.tree.map(np.asarray, params)
  velocity = jax.tree.map(np.zeros_like, params)
  lr, momentum, decay = config.learning_rate, config.momentum, config.weight_decay

  def loss_fn(params, batch, step):
    keys = augment.example_keys(augment_seed, step, np.arange(len(batch['label'])))
    images = augment.train_images(aug, batch['image'], keys)
    logits = model.apply({'params': params}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  losses, norms = [], []
  for step, batch in enumerate(batches):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, step)
    losses.append(float(loss))
    norms.append(float(optax.global_norm(grads)))
    velocity = jax.tree.map(lambda v, w, g: momentum * v - decay * lr * w - lr * np.asarray(g),
                            velocity, params, grads)
    params = jax.tree.map(lambda w, v: w + v, params, velocity)
  return params, losses, norms


# Every rewrite of the step on (`models.OPTIONS`; the first choice of each is today's form).
ALL_REWRITES = {'conv1': 'space_to_depth', 'max_pool': 'slices', 'lrn_gradient': 'by_hand',
                'tower_layout': 'apart'}
# The rewrites that change how `model` is computed (owt has no LRN and one tower).
REWRITES_OF = {'owt': ('conv1', 'max_pool'), 'paper': tuple(ALL_REWRITES)}


def rewrite_cases(quick: tuple[str, ...] = ()):
  """pytest params (model, options): every rewrite at once for each model (slow but for the
  models in `quick`), then each alone (slow)."""
  every = [pytest.param(model, {k: ALL_REWRITES[k] for k in fields}, id=f'{model}-all',
                        marks=() if model in quick else pytest.mark.slow)
           for model, fields in REWRITES_OF.items()]
  alone = [pytest.param(model, {field: ALL_REWRITES[field]}, id=f'{model}-{field}',
                        marks=pytest.mark.slow)
           for model, fields in REWRITES_OF.items() for field in fields]
  return every + alone


def todays(config):
  """A copy of `config` with today's form of every rewrite: the reference's."""
  config = config.copy_and_resolve_references()
  for field, choices in models.OPTIONS.items():
    config[field] = choices[0]
  return config


def assert_same_updates(params, ref_params, init):
  """Each parameter's change from `init` equals the reference's, which is not zero."""
  for (path, value), ref, start in zip(jax.tree_util.tree_leaves_with_path(params),
                                       jax.tree.leaves(ref_params), jax.tree.leaves(init),
                                       strict=True):
    update, ref_update = value - start, ref - start
    assert np.abs(ref_update).max() > 0, jax.tree_util.keystr(path)
    np.testing.assert_allclose(update, ref_update, rtol=1e-3,
                               atol=1e-4 * np.abs(ref_update).max(),
                               err_msg=jax.tree_util.keystr(path))
