"""The mapped steps on 2 devices against the same global batch on 1 device."""

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import data, optim, train
from alexnet_jax.data import augment, to_devices
from alexnet_jax.loop import evaluate
from alexnet_jax.parallel import placement, steps
from tests.conftest import assert_same_tree, tiny_config
from tests.reference import assert_same_updates, reference_sgd, rewrite_cases, todays

MEAN, STD = (127.5, 127.5, 127.5), (1.0, 1.0, 1.0)


def _centre(config):
  """Patches as the stored images are, the mean pixel subtracted: the stored size is the
  patch size, so the centre patch is the whole image."""
  return augment.Augmentation(image_size=config.image_size, mean=np.float32(MEAN),
                              std=np.float32(STD))


def _paper(config):
  """Random patches of larger stored images, reflections, PCA colour shifts."""
  return augment.from_config(config)


def _config():
  config = tiny_config()
  config.dropout_rate = 0.0   # the one randomness that differs by device
  config.learning_rate = 0.05
  return config


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  size, b = config.resize_size, config.global_batch_size
  return [{'image': rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, b).astype(np.int32)} for _ in range(n)]


def _train(config, devices, batches):
  mesh = placement.make_mesh(devices)
  model = train.create_model(config, num_classes=10)
  state = train.create_train_state(config, model, mesh)
  step = steps.make_train_step(model, _paper(config), config.seed, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, placement.shard_batch(batch, mesh))
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
      config, train.create_model(config, 10), placement.make_mesh(jax.devices()[:1])).params)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(flat_1, jax.tree.leaves(init)))
  assert moved > 1e-3


def test_eval_counts_every_real_example_once_and_no_padding():
  config = _config()
  config.resize_size = config.image_size
  mesh = placement.make_mesh()
  model = train.create_model(config, num_classes=10)
  params = train.create_train_state(config, model, mesh).params
  batch = _batches(config, 1, seed=1)[0]
  mask = np.array([1, 1, 1, 0, 1, 1, 0, 0], np.float32)   # 5 real examples
  counts = steps.make_eval_step(model, _centre(config), mesh)(
      [params], placement.shard_batch({**batch, 'mask': mask}, mesh))
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


def test_ensemble_of_ten_patches_averages_the_softmax_over_models_and_patches():
  config = _config()
  mesh = placement.make_mesh()
  model = train.create_model(config, num_classes=10)
  members = []
  for seed in (0, 1):
    config.seed = seed
    members.append(jax.device_get(train.create_train_state(config, model, mesh).params))
  rng = np.random.default_rng(3)
  b, crops, size, stored = config.global_batch_size, 10, config.image_size, config.resize_size
  images = rng.integers(0, 256, (b, stored, stored, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, b).astype(np.int32)
  mask = np.ones(b, np.float32)
  aug = augment.Augmentation(image_size=size, mean=np.float32(MEAN), std=np.float32(STD))
  counts = steps.make_eval_step(model, aug, mesh, ten_patches=True)(
      members, placement.shard_batch({'image': images, 'label': labels, 'mask': mask}, mesh))
  # Reference: NumPy slices of the corners and the centre, and their reflections; the
  # softmax of each model on each patch, averaged.
  slack = stored - size
  offsets = [(0, 0), (0, slack), (slack, 0), (slack, slack), (slack // 2, slack // 2)]
  patches = np.stack([images[:, y:y + size, x:x + size] for y, x in offsets], axis=1)
  patches = np.concatenate([patches, patches[:, :, :, ::-1]], axis=1)
  flat = patches.reshape(-1, size, size, 3).astype(np.float32) - np.float32(127.5)
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
  mesh = placement.make_mesh()
  dataset = data.create(config, config.global_batch_size)
  model = train.create_model(config, dataset.num_classes)
  state = train.create_train_state(config, model, mesh)
  train_step = steps.make_train_step(model, _paper(config), config.seed, mesh)
  eval_step = steps.make_eval_step(model, _paper(config), mesh)
  compiles = []

  def on_event(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':   # one per XLA compilation
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    put = to_devices.ToDevices(mesh, placement.batch_spec(model, mesh))
    batches = dataset.train_batches(0, put=put)
    state, _ = train_step(state, next(batches))
    evaluate.evaluate(eval_step, [state.params], dataset, put)
    first = len(compiles)
    for step in range(2, 7):
      if step == 4:
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, 0.001))
      state, metrics = train_step(state, next(batches))
      jax.device_get(metrics)
    evaluate.evaluate(eval_step, [state.params], dataset, put)
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert first >= 2   # the train and eval steps were compiled, and counted
  assert len(compiles) == first
  assert int(state.step) == 6
  assert optim.get_learning_rate(state.opt_state) == pytest.approx(0.001)


@pytest.mark.parametrize('variant, options', [pytest.param('owt', {}, id='today')] +
                         rewrite_cases(quick=('owt',)))
def test_two_devices_take_the_papers_update_written_out_with_mean_std_and_colour_shift(
    variant, options):
  """Against the update written by hand (tests/reference.py) on one device with today's
  network: ImageNet's mean pixel, torchvision's std, the PCA colour shift and random patches
  all in the step; on the 2 x 1 mesh, with today's network or with the step's rewrites."""
  config = _config()
  config.model = variant
  config.learning_rate = 0.05 if variant == 'owt' else 0.5   # updates well above rounding
  config.update(options)
  config.mean_rgb, config.std_rgb = (123.68, 116.78, 103.94), (58.395, 57.12, 57.375)
  config.pca_lighting_std = 0.1
  batches = _batches(config, 2, seed=5)
  mesh = placement.make_mesh()
  model = train.create_model(config, num_classes=10)
  state = train.create_train_state(config, model, mesh)
  init = jax.device_get(state.params)
  step = steps.make_train_step(model, augment.from_config(config), config.seed, mesh)
  losses, norms = [], []
  for batch in batches:
    state, metrics = step(state, placement.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
    norms.append(float(metrics['grad_norm']))
  ref_params, ref_losses, ref_norms = reference_sgd(todays(config), init, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
  assert_same_updates(jax.device_get(state.params), ref_params, init)


def _one_step(config, devices, batch, step_numbers=(0,)):
  """(loss, parameters) after one step from the initial state numbered each of
  `step_numbers`, by one compiled step."""
  mesh = placement.make_mesh(devices)
  model = train.create_model(config, num_classes=10)
  step = steps.make_train_step(model, _centre(config), config.seed, mesh)
  results = []
  for number in step_numbers:
    state = train.create_train_state(config, model, mesh)   # the step donates its state
    state = state.replace(step=jax.device_put(np.int32(number), state.step.sharding))
    state, metrics = step(state, placement.shard_batch(batch, mesh))
    results.append((float(metrics['loss']), jax.device_get(state.params)))
  return results[0] if len(results) == 1 else results


def test_dropout_masks_differ_from_step_to_step_and_from_device_to_device():
  config = _config()
  config.resize_size = config.image_size   # no random patches
  half = _batches(config, 1, seed=2)[0]
  half = {k: v[:config.global_batch_size // 2] for k, v in half.items()}
  # Mirror-symmetric images: a reflection changes nothing, and dropout is the one draw left.
  left = half['image'][:, :, :config.image_size // 2]
  half['image'] = np.concatenate([left, left[:, :, ::-1]], axis=2)
  twice = {k: np.concatenate([v, v]) for k, v in half.items()}   # each device the same examples
  config.global_batch_size //= 2
  for rate, masks_differ in ((0.0, False), (0.5, True)):
    config.dropout_rate = rate
    one_loss, one = _one_step(config, jax.devices()[:1], half)
    config.global_batch_size *= 2
    (two_loss, two), (later_loss, _) = _one_step(config, jax.devices()[:2], twice, (0, 1))
    config.global_batch_size //= 2
    # Device 1 with its own masks makes the two-device step differ from device 0's alone.
    differs = not np.allclose(two['fc7']['kernel'], one['fc7']['kernel'], rtol=1e-5, atol=1e-7)
    assert differs == masks_differ, rate
    assert (two_loss != later_loss) == masks_differ, rate   # another step, other masks


def test_a_bfloat16_step_is_close_to_the_float32_one_and_keeps_float32_parameters():
  config = _config()
  batch = _batches(config, 1, seed=3)[0]
  init = jax.device_get(train.create_train_state(
      config, train.create_model(config, 10), placement.make_mesh()).params)
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config.dtype = dtype
    results[dtype] = _one_step(config, jax.devices()[:2], batch)
  (loss32, params32), (loss16, params16) = results['float32'], results['bfloat16']
  assert abs(loss16 - loss32) < 0.02 * loss32
  assert all(b.dtype == np.float32 for b in jax.tree.leaves(params16))
  # The whole update, computed in bfloat16 (8 bits of mantissa): the same direction and size
  # (measured: cosine 0.995, size ratio 0.994).
  flat = lambda params: np.concatenate([(p - w).ravel() for p, w in zip(  # noqa: E731
      jax.tree.leaves(params), jax.tree.leaves(init))])
  update32, update16 = flat(params32), flat(params16)
  cosine = update16 @ update32 / (np.linalg.norm(update16) * np.linalg.norm(update32))
  assert cosine > 0.98
  assert abs(np.linalg.norm(update16) / np.linalg.norm(update32) - 1) < 0.02


def test_a_step_whose_loss_is_not_finite_leaves_the_state_as_it_was():
  config = _config()
  config.learning_rate = 1e30   # step 1 is finite, and throws the parameters to infinity
  mesh = placement.make_mesh()
  model = train.create_model(config, num_classes=10)
  state = train.create_train_state(config, model, mesh)
  step = steps.make_train_step(model, _paper(config), config.seed, mesh)
  batch = placement.shard_batch(_batches(config, 1, seed=4)[0], mesh)
  state, first = step(state, batch)
  assert bool(first['finite'])
  before = jax.device_get(state)
  state, second = step(state, batch)
  assert not bool(second['finite'])
  assert_same_tree(before, jax.device_get(state))   # parameters, momentum and step untouched
