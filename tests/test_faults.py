"""Nothing lost: preemption, kills, corrupt checkpoints, divergence and bad input."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import config_checks, errors, train
from tests.conftest import NUM_DEVICES, saved_state, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(num_train_steps, **overrides):
  config = tiny_config()
  config.num_train_steps = num_train_steps
  config.eval_every_steps = 1000
  for key, value in overrides.items():
    config[key] = value
  return config




def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps_saved(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, 'checkpoints')) if p.isdigit())


def _start_main(workdir, num_train_steps):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={NUM_DEVICES}'}
  flags = [f'--config.{k}={v}' for k, v in dict(
      width=0.125, image_size=64, resize_size=73, global_batch_size=8, log_every_steps=2,
      checkpoint_every_steps=5, eval_every_steps=1000, num_train_steps=num_train_steps,
      **{'synthetic.train_examples': 64, 'synthetic.eval_examples': 13}).items()]
  return subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/alexnet.py:demo', f'--workdir={workdir}',
       *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(process, workdir, step, timeout=240):
  path = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.monotonic() + timeout
  while not os.path.isdir(path):
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.monotonic() < deadline, f'no checkpoint {step} after {timeout}s'
    time.sleep(0.05)


def test_sigkill_then_sigterm_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
  steps = 2000   # long enough that the signals land mid-run
  interrupted = str(tmp_path / 'interrupted')

  killed = _start_main(interrupted, steps)
  _wait_for_checkpoint(killed, interrupted, 10)
  killed.send_signal(signal.SIGKILL)
  killed.wait(timeout=60)

  preempted = _start_main(interrupted, steps)
  _wait_for_checkpoint(preempted, interrupted, 20)
  preempted.send_signal(signal.SIGTERM)
  output, _ = preempted.communicate(timeout=120)
  assert preempted.returncode == 0, output[-3000:]
  assert 'Received SIGTERM' in output
  stopped_at = _steps_saved(interrupted)[-1]
  assert stopped_at >= 20, output[-3000:]

  # Finish both in-process to a common end just past the preemption.
  end = stopped_at + 3
  train.train_and_evaluate(_config(end, checkpoint_every_steps=5), interrupted)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(end, checkpoint_every_steps=5), straight)
  _assert_same_state(saved_state(interrupted, end), saved_state(straight, end))


def test_corrupt_newest_checkpoint_is_set_aside_and_the_one_before_restored(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(4, checkpoint_every_steps=2), workdir)
  assert _steps_saved(workdir) == [2, 4]
  good_4 = saved_state(workdir, 4)
  state_dir = tmp_path / 'checkpoints' / '4' / 'state'
  for path in state_dir.rglob('*'):   # truncate every file of the newest checkpoint
    if path.is_file():
      path.write_bytes(b'')
  train.train_and_evaluate(_config(4, checkpoint_every_steps=2), workdir)
  assert 'cannot be read' in caplog.text and '4.unreadable' in caplog.text
  assert (tmp_path / 'checkpoints' / '4.unreadable').is_dir()
  assert 'Restored the checkpoint of step 2' in caplog.text
  assert _steps_saved(workdir) == [2, 4]
  _assert_same_state(saved_state(workdir, 4), good_4)   # step 4 retrained from step 2, exactly


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # A huge learning rate: step 1 is finite, the parameters then overflow at step 2.
  config = _config(6, checkpoint_every_steps=1, log_every_steps=1, learning_rate=1e30)
  with pytest.raises(errors.DivergenceError) as raised:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(raised.value)
  assert 'step 2' in message and str(tmp_path / 'checkpoints' / '1') in message
  assert _steps_saved(str(tmp_path)) == [1]
  saved = saved_state(str(tmp_path), 1)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved['params']))


def test_best_checkpoint_is_kept_apart_and_survives_a_restart(tmp_path, monkeypatch):
  # Scripted validation errors at steps 2, 4, 6 | restart | 8, 10: the lowest is at step 4.
  # After the restart 0.35 and 0.32 must not count as the best, though they are this run's best.
  scripted = iter([0.5, 0.3, 0.4, 0.35, 0.32])
  real_evaluate = train.evaluate.evaluate
  monkeypatch.setattr(train.evaluate, 'evaluate',
                      lambda *a: {**real_evaluate(*a), 'top1_error': next(scripted)})
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(6, eval_every_steps=2, keep_checkpoints=10), workdir)
  train.train_and_evaluate(_config(10, eval_every_steps=2, keep_checkpoints=10), workdir)

  assert _steps_saved(workdir) == [2, 4, 6, 8, 10]
  assert os.listdir(tmp_path / 'best') == ['4']
  best = ocp.PyTreeCheckpointer().restore(str(tmp_path / 'best' / '4' / 'state'))
  _assert_same_state(best, saved_state(workdir, 4))
  with open(tmp_path / 'best' / '4' / 'loop_state' / 'metadata') as f:
    assert json.load(f)['eval']['top1_error'] == 0.3


def test_checkpoint_of_another_model_is_refused(tmp_path):
  train.train_and_evaluate(_config(2), str(tmp_path))
  with pytest.raises(errors.ConfigError, match='different model'):
    train.train_and_evaluate(_config(4, width=0.25), str(tmp_path))
  assert _steps_saved(str(tmp_path)) == [2]


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  with pytest.raises(errors.ConfigError, match='cannot be written'):
    train.train_and_evaluate(_config(2), str(blocker / 'workdir'))


@pytest.mark.parametrize('field, value', [
    ('model', 'vgg'), ('global_batch_size', 3), ('image_size', 0), ('width', -1.0),
    ('model_axis_size', 3)])
def test_bad_fields_are_named(tmp_path, field, value):
  config = _config(2)
  config[field] = value
  with pytest.raises(errors.ConfigError, match=f'--config.{field}='):
    train.train_and_evaluate(config, str(tmp_path))


def test_model_splits_the_network_cannot_take_are_named():
  config = _config(2)
  config.model, config.model_axis_size = 'paper', 4
  with pytest.raises(errors.ConfigError, match='model_axis_size=4: the paper model splits over 2'):
    config_checks.check(config, num_devices=8)
  config.model, config.width, config.model_axis_size = 'owt', 0.5, 3   # 2048 hidden units
  with pytest.raises(errors.ConfigError, match='model_axis_size=3 does not divide the 2048 units'):
    config_checks.check(config, num_devices=6)
  config.model_axis_size = 2
  with pytest.raises(errors.ConfigError, match='must divide the 1 devices of each host'):
    config_checks.check(config, num_devices=2, num_local_devices=1)
  config.model_axis_size = 4
  with pytest.raises(errors.ConfigError, match="does not divide the dataset's 10 classes"):
    config_checks.check_classes(config, 10)


def test_unknown_variant_of_the_config_file_is_named():
  from configs import alexnet
  with pytest.raises(ValueError, match='paper, owt, demo or imagenette'):
    alexnet.get_config('resnet')
