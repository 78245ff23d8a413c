"""The paper's update written out by hand: the independent reference of the train step's tests."""

import jax
import numpy as np
import optax

from alexnet_jax import train
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
