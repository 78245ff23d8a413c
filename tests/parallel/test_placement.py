"""The network split over a 2 x 2 (batch, model) mesh of 4 simulated devices, against one device.

These checks need 4 devices, and the suite runs on 2: `test_on_four_devices` runs this file
again in a process of its own with 4 (tests/conftest.py reads ALEXNET_TEST_DEVICES); in the
suite's own process the other tests skip.
"""

import collections
import functools
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import data, models, train
from alexnet_jax.data import augment, to_devices
from alexnet_jax.loop import evaluate
from alexnet_jax.parallel import placement, steps
from alexnet_jax.workdir import checkpointing
from tests.conftest import saved_state, tiny_config
from tests.reference import assert_same_updates, reference_sgd, rewrite_cases, todays

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOUR_DEVICES = jax.device_count() == 4
needs_four_devices = pytest.mark.skipif(
    not FOUR_DEVICES, reason='needs 4 devices: run by test_on_four_devices in a 4-device process')


@pytest.mark.slow
@pytest.mark.skipif(FOUR_DEVICES, reason='this process is the 4-device one')
def test_on_four_devices():
  env = dict(os.environ, ALEXNET_TEST_DEVICES='4',
             XLA_FLAGS=re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                              os.environ.get('XLA_FLAGS', '')))
  result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           '-n', '0', __file__], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  # Every 4-device check ran there (this test itself is deselected there, as slow).
  summary = result.stdout.splitlines()[-1]
  assert 'passed' in summary and 'skipped' not in summary, result.stdout[-2000:]


def _config(model: str, model_axis_size: int = 2):
  config = tiny_config()
  config.model = model
  config.model_axis_size = model_axis_size
  config.dropout_rate = 0.0   # the one randomness that differs by device
  config.learning_rate = 0.05 if model == 'owt' else 0.5   # updates well above rounding
  return config


def _batches(config, n: int):
  rng = np.random.default_rng(7)
  size, b = config.resize_size, config.global_batch_size
  return [{'image': rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, b).astype(np.int32)} for _ in range(n)]


@functools.cache
def _two_steps_on_2x2(model: str):
  """(config, batches, initial params, state, losses, gradient norms), shared by the tests."""
  config = _config(model)
  batches = _batches(config, 2)
  return (config, batches, *_mesh_run(config, batches))


def _mesh_run(config, batches, devices=None):
  mesh = placement.make_mesh(devices, model_axis_size=config.model_axis_size)
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, mesh)
  init = jax.device_get(state.params)
  step = steps.make_train_step(model, augment.from_config(config), config.seed, mesh)
  losses, norms = [], []
  for batch in batches:
    state, metrics = step(state, placement.shard_batch(batch, mesh,
                                                      placement.batch_spec(model, mesh)))
    losses.append(float(metrics['loss']))
    norms.append(float(metrics['grad_norm']))
  return init, state, losses, norms


@needs_four_devices
@pytest.mark.parametrize('model', ['paper', 'owt'])
def test_two_steps_on_a_2x2_mesh_match_one_device(model):
  config, batches, init, state, losses, norms = _two_steps_on_2x2(model)
  ref_params, ref_losses, ref_norms = reference_sgd(config, init, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
  assert_same_updates(jax.device_get(state.params), ref_params, init)


@pytest.mark.parametrize('model, options', rewrite_cases(quick=()))
def test_two_steps_on_a_1x2_mesh_with_the_steps_rewrites_match_today_on_one_device(model,
                                                                                    options):
  """The network split over 2 devices (the paper's towers one per device, owt's classifier
  split), computed with the rewrites, against today's network on one device."""
  config = _config(model)
  config.update(options)
  batches = _batches(config, 2)
  init, state, losses, norms = _mesh_run(config, batches, jax.devices()[:2])
  ref_params, ref_losses, ref_norms = reference_sgd(todays(config), init, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
  assert_same_updates(jax.device_get(state.params), ref_params, init)


def _shard_of(array, device):
  return next(s for s in array.addressable_shards if s.device == device)


@needs_four_devices
def test_each_tower_lives_on_its_own_device():
  state = _two_steps_on_2x2('paper')[3]
  mesh = placement.make_mesh(model_axis_size=2)
  momentum = state.opt_state.inner_state[2].trace
  for name in models.LAYERS:
    for array in (state.params[name]['kernel'], momentum[name]['kernel']):
      assert array.sharding.spec[-1] == 'model', name
      whole = np.asarray(jax.device_get(array))
      half = whole.shape[-1] // 2
      for row in mesh.devices:          # each `batch` index holds both towers, one per device
        tower0, tower1 = (np.asarray(_shard_of(array, d).data) for d in row)
        np.testing.assert_array_equal(tower0, whole[..., :half])
        np.testing.assert_array_equal(tower1, whole[..., half:])
        assert not np.array_equal(tower0, tower1)


@needs_four_devices
def test_owt_hybrid_keeps_convolutions_whole_and_splits_the_classifier():
  state = _two_steps_on_2x2('owt')[3]
  for name in models.LAYERS:
    kernel = state.params[name]['kernel']
    if name.startswith('conv'):
      assert kernel.sharding.spec == P(), name
      assert all(s.data.shape == kernel.shape for s in kernel.addressable_shards)
    else:
      assert kernel.sharding.spec == P(None, 'model'), name
      assert all(s.data.shape[-1] == kernel.shape[-1] // 2 for s in kernel.addressable_shards)


@needs_four_devices
def test_owt_evaluation_on_2x2_counts_every_example_once_as_on_4x1():
  """13 validation examples (padded to 16, the padding masked) give the same counts split:
  each device evaluates its own examples and the `model` group gathers them. (The paper's
  towers see the same examples; its run below counts 13 too.)"""
  config, _, _, state, _, _ = _two_steps_on_2x2('owt')
  dataset = data.create(config, config.global_batch_size)
  params = jax.device_get(state.params)
  results = []
  for model_axis_size in (2, 1):
    mesh = placement.make_mesh(model_axis_size=model_axis_size)
    net = train.create_model(config, 10)
    template = train.create_train_state(config, net, mesh).params   # placed as on this mesh
    placed = jax.tree.map(lambda t, p: jax.device_put(p, t.sharding), template, params)
    step = steps.make_eval_step(net, augment.from_config(config), mesh)
    put = to_devices.ToDevices(mesh, placement.batch_spec(net, mesh))
    results.append(evaluate.evaluate(step, [placed], dataset, put))
  split, whole = results
  assert split['examples'] == whole['examples'] == 13
  assert split['top1_error'] == whole['top1_error'] and split['top5_error'] == whole['top5_error']
  assert split['loss'] == pytest.approx(whole['loss'], rel=1e-5)


MODEL_GROUPS, BATCH_GROUPS = '{{0,1},{2,3}}', '{{0,2},{1,3}}'


def _collectives(config):
  """(op, replica groups, result shape) of each collective in the compiled train step."""
  mesh = placement.make_mesh(model_axis_size=2)
  model = train.create_model(config, 10)
  state = train.create_train_state(config, model, mesh)
  batch = placement.shard_batch(_batches(config, 1)[0], mesh, placement.batch_spec(model, mesh))
  hlo = steps.make_train_step(model, augment.from_config(config), config.seed, mesh).lower(
      state, batch).compile().as_text()
  found = []
  for line in hlo.splitlines():
    match = re.search(r'= (.+?) (all-gather|reduce-scatter|all-reduce|all-to-all|'
                      r'collective-permute)(-start)?\(.*replica_groups=(\{[{}0-9,]*\})', line)
    if match:
      found.append((match.group(2), match.group(4), match.group(1)))
  return found


@needs_four_devices
def test_paper_towers_exchange_only_where_the_paper_does():
  """conv3, fc6, fc7 and fc8 gather the towers' outputs (and the loss the logits); the
  backward pass reduce-scatters at the same five places; all else is over `batch`."""
  config = _config('paper')
  found = _collectives(config)
  over_model = collections.Counter((op, shape) for op, groups, shape in found
                                   if groups == MODEL_GROUPS)
  b = config.global_batch_size // 2   # examples per batch index
  pooled2, pooled5 = 'f32[%d,3,3,32]' % b, 'f32[%d,1,1,32]' % b   # conv2 and conv5 after pooling
  hidden, classes = 'f32[%d,512]' % b, 'f32[%d,10]' % b
  assert {(op, shape.split('{')[0]): n for (op, shape), n in over_model.items()} == {
      ('all-gather', pooled2): 1,                 # conv3 takes both towers' conv2 maps
      ('all-gather', pooled5): 1,                 # fc6 takes both towers' conv5 maps
      ('all-gather', hidden): 2,                  # fc7 and fc8 take all of fc6 and fc7
      ('all-gather', classes): 1,                 # the softmax takes all 10 logits
      ('reduce-scatter', pooled2.replace('32]', '16]')): 1,   # and back, in the backward pass
      ('reduce-scatter', pooled5.replace('32]', '16]')): 1,
      ('reduce-scatter', hidden.replace('512]', '256]')): 2,
      ('reduce-scatter', classes.replace('10]', '5]')): 1,
      ('all-reduce', 'f32[]'): 1,                 # the gradient norm's sum of squares
  }
  others = [(op, groups) for op, groups, _ in found if groups != MODEL_GROUPS]
  assert others and all(op == 'all-reduce' and groups == BATCH_GROUPS for op, groups in others)


@needs_four_devices
def test_a_checkpoint_saved_on_2x2_restores_on_4x1_and_on_one_device(tmp_path):
  workdir = str(tmp_path)
  config = _config('paper')
  config.num_train_steps = 2
  metrics = train.train_and_evaluate(config, workdir)       # 2 x 2: towers on two devices
  assert metrics['examples'] == 13   # counted over `batch` only, not again over `model`
  saved = saved_state(workdir, 2)
  model = train.create_model(config, 10)
  for mesh in (placement.make_mesh(model_axis_size=1),       # 4 x 1: data parallel only
               placement.make_mesh(jax.devices()[:1])):      # one device
    template = train.create_train_state(config, model, mesh)
    state, _ = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                         read_only=True).restore(template)
    assert int(state.step) == 2
    momentum = state.opt_state.inner_state[2].trace
    saved_momentum = saved['opt_state']['inner_state'][2]['trace']
    for name in models.LAYERS:
      for restored, expected in ((state.params[name]['kernel'], saved['params'][name]['kernel']),
                                 (momentum[name]['kernel'], saved_momentum[name]['kernel'])):
        np.testing.assert_array_equal(np.asarray(restored), expected)
        assert restored.sharding.device_set == set(mesh.devices.flat)
        assert restored.sharding.is_fully_replicated
