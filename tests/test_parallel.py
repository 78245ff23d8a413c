"""The mapped steps on 2 devices against the same global batch on 1 device."""

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import evaluate, input_pipeline, optim, parallel, train
from tests.conftest import tiny_config

MEAN, STD = (127.5, 127.5, 127.5), (1.0, 1.0, 1.0)


def _config():
  config = tiny_config()
  config.dropout_rate = 0.0   # the one randomness that differs by device
  config.learning_rate = 0.05
  return config


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  size, b = config.image_size, config.global_batch_size
  return [{'image': rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, b).astype(np.int32)} for _ in range(n)]


def _train(config, devices, batches):
  mesh = parallel.make_mesh(devices)
  model = train.create_model(config, num_classes=10)
  state = train.create_train_state(config, model, mesh)
  step = parallel.make_train_step(model, MEAN, STD, config.seed, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return jax.device_get(state.params), losses


def test_two_devices_train_like_one_device_on_the_same_global_batch():
  config = _config()
  batches = _batches(config, 3)
  params_1, losses_1 = _train(config, jax.devices()[:1], batches)
  params_2, losses_2 = _train(config, jax.devices()[:2], batches)
  np.testing.assert_allclose(losses_2, losses_1, rtol=1e-5)
  flat_1, flat_2 = jax.tree.leaves(params_1), jax.tree.leaves(params_2)
  for a, b in zip(flat_1, flat_2):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  # The parameters really moved, by more than the tolerance above.
  init = jax.device_get(train.create_train_state(
      config, train.create_model(config, 10), parallel.make_mesh(jax.devices()[:1])).params)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(flat_1, jax.tree.leaves(init)))
  assert moved > 1e-3


def test_eval_counts_every_real_example_once_and_no_padding():
  config = _config()
  mesh = parallel.make_mesh()
  model = train.create_model(config, num_classes=10)
  params = train.create_train_state(config, model, mesh).params
  batch = _batches(config, 1, seed=1)[0]
  mask = np.array([1, 1, 1, 0, 1, 1, 0, 0], np.float32)   # 5 real examples
  counts = parallel.make_eval_step(model, MEAN, STD, mesh)(
      [params], parallel.shard_batch({**batch, 'mask': mask}, mesh))
  # Reference: the model on the real examples alone, on one device, without the mapped step.
  real = mask.astype(bool)
  images = batch['image'][real].astype(np.float32) - np.float32(127.5)
  logits = np.asarray(model.apply({'params': jax.device_get(params)}, images, train=False))
  labels = batch['label'][real]
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert float(counts['count']) == 5
  assert float(counts['top1_correct']) == np.sum(logits.argmax(1) == labels)
  assert float(counts['top5_correct']) == np.sum((top5 == labels[:, None]).any(1))
  ref_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
  np.testing.assert_allclose(float(counts['loss_sum']), ref_loss, rtol=1e-5)


def test_ensemble_of_patches_averages_the_softmax_over_models_and_patches():
  config = _config()
  mesh = parallel.make_mesh()
  model = train.create_model(config, num_classes=10)
  members = []
  for seed in (0, 1):
    config.seed = seed
    members.append(jax.device_get(train.create_train_state(config, model, mesh).params))
  rng = np.random.default_rng(3)
  b, crops, size = config.global_batch_size, 3, config.image_size
  images = rng.integers(0, 256, (b, crops, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, b).astype(np.int32)
  mask = np.ones(b, np.float32)
  counts = parallel.make_eval_step(model, MEAN, STD, mesh)(
      members, parallel.shard_batch({'image': images, 'label': labels, 'mask': mask}, mesh))
  # Reference: NumPy softmax of each model on each patch, averaged.
  flat = images.reshape(-1, size, size, 3).astype(np.float32) - np.float32(127.5)
  probs = []
  for params in members:
    logits = np.asarray(model.apply({'params': params}, flat, train=False), np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs.append((e / e.sum(1, keepdims=True)).reshape(b, crops, 10))
  mean = np.mean(probs, axis=(0, 2))
  assert float(counts['top1_correct']) == np.sum(mean.argmax(1) == labels)
  top5 = np.argsort(-mean, axis=1)[:, :5]
  assert float(counts['top5_correct']) == np.sum((top5 == labels[:, None]).any(1))
  np.testing.assert_allclose(float(counts['loss_sum']),
                             -np.log(mean[np.arange(b), labels]).sum(), rtol=1e-5)


def test_nothing_compiles_after_the_first_steps():
  """Later steps, a learning-rate drop and later evaluations reuse the first compilation."""
  config = _config()
  mesh = parallel.make_mesh()
  data = input_pipeline.create(config, config.global_batch_size)
  model = train.create_model(config, data.num_classes)
  state = train.create_train_state(config, model, mesh)
  train_step = parallel.make_train_step(model, MEAN, STD, config.seed, mesh)
  eval_step = parallel.make_eval_step(model, MEAN, STD, mesh)
  compiles = []

  def on_event(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':   # one per XLA compilation
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    batches = parallel.prefetch_to_mesh(data.train_batches(0), mesh)
    state, _ = train_step(state, next(batches))
    evaluate.evaluate(eval_step, [state.params], data, mesh, parallel.batch_spec(model, mesh))
    first = len(compiles)
    for step in range(2, 7):
      if step == 4:
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, 0.001))
      state, metrics = train_step(state, next(batches))
      jax.device_get(metrics)
    evaluate.evaluate(eval_step, [state.params], data, mesh, parallel.batch_spec(model, mesh))
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert first >= 2   # the train and eval steps were compiled, and counted
  assert len(compiles) == first
  assert int(state.step) == 6
  assert optim.get_learning_rate(state.opt_state) == pytest.approx(0.001)
