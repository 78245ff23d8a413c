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
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from alexnet_jax import config_checks, errors, optim, train
from alexnet_jax.benchmarking import processes
from alexnet_jax.loop import stopping
from alexnet_jax.parallel import placement
from alexnet_jax.workdir import checkpointing, trained
from tests.conftest import NUM_DEVICES, assert_same_tree, run_config, saved_state

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(num_train_steps, **overrides):
  # The plateau rule: a rate set by the step alone, not by the run's length (the demo's
  # cosine), since these runs are stopped early and resumed to a nearer end.
  return run_config(num_train_steps,
                    **{'eval_every_steps': 1000, 'lr_schedule': 'plateau', **overrides})




def _steps_saved(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, 'checkpoints')) if p.isdigit())


def _start_main(workdir, num_train_steps, data_workers=0):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={NUM_DEVICES}'}
  flags = [f'--config.{k}={v}' for k, v in dict(
      width=0.125, image_size=64, resize_size=73, global_batch_size=8, log_every_steps=2,
      checkpoint_every_steps=5, eval_every_steps=1000, num_train_steps=num_train_steps,
      data_workers=data_workers, lr_schedule='plateau',
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


@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
  steps = 2000   # long enough that the signals land mid-run
  interrupted = str(tmp_path / 'interrupted')

  killed = _start_main(interrupted, steps, data_workers=2)   # decoding in 2 processes
  _wait_for_checkpoint(killed, interrupted, 10)
  workers = processes.children(killed.pid)
  assert len(workers) >= 2, workers
  killed.send_signal(signal.SIGKILL)
  killed.wait(timeout=60)
  killed_at = _steps_saved(interrupted)[-1]
  deadline = time.monotonic() + 20
  while any(os.path.exists(f'/proc/{pid}') for pid in workers):   # nothing left running
    assert time.monotonic() < deadline, f'worker processes {workers} outlived a SIGKILL'
    time.sleep(0.2)

  preempted = _start_main(interrupted, steps)
  _wait_for_checkpoint(preempted, interrupted, 20)
  preempted.send_signal(signal.SIGTERM)
  output, _ = preempted.communicate(timeout=120)
  assert preempted.returncode == 0, output[-3000:]
  assert 'Received SIGTERM' in output
  assert f'Restored the checkpoint of step {killed_at}' in output, output[-3000:]
  stopped_at = _steps_saved(interrupted)[-1]
  assert stopped_at >= 20, output[-3000:]

  # Finish both in-process to a common end just past the preemption.
  end = stopped_at + 3
  train.train_and_evaluate(_config(end, checkpoint_every_steps=5), interrupted)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(end, checkpoint_every_steps=5), straight)
  assert_same_tree(saved_state(interrupted, end), saved_state(straight, end))


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
  assert 'is damaged' in caplog.text and '4.unreadable' in caplog.text
  assert (tmp_path / 'checkpoints' / '4.unreadable').is_dir()
  assert 'Restored the checkpoint of step 2' in caplog.text
  assert _steps_saved(workdir) == [2, 4]
  assert_same_tree(saved_state(workdir, 4), good_4)   # step 4 retrained from step 2, exactly


def _two_checkpoints(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(4, checkpoint_every_steps=2), workdir)
  assert _steps_saved(workdir) == [2, 4]
  return workdir


def test_a_checkpoint_of_another_optimiser_stops_the_run_and_is_left_alone(tmp_path,
                                                                           monkeypatch):
  """As after an optax upgrade that changes the optimiser state's tree: not damage."""
  workdir = _two_checkpoints(tmp_path)
  paper_sgd = optim.paper_sgd
  monkeypatch.setattr(optim, 'paper_sgd',
                      lambda *a, **k: optax.chain(paper_sgd(*a, **k), optax.scale_by_adam()))
  with pytest.raises(errors.CheckpointError) as raised:
    train.train_and_evaluate(_config(6, checkpoint_every_steps=2), workdir)
  assert f'{workdir}/checkpoints/4 could not be restored' in str(raised.value)
  assert 'tree structures do not match' in str(raised.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_a_storage_error_stops_the_run_renames_nothing_and_a_rerun_resumes(tmp_path,
                                                                            monkeypatch):
  workdir = _two_checkpoints(tmp_path)
  restore = ocp.CheckpointManager.restore

  def failing(*args, **kwargs):
    raise OSError(5, 'Input/output error')

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', failing)
  with pytest.raises(errors.CheckpointError, match='OSError: .*Input/output error'):
    train.train_and_evaluate(_config(6, checkpoint_every_steps=2), workdir)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', restore)   # the storage is back
  train.train_and_evaluate(_config(6, checkpoint_every_steps=2), workdir)
  assert _steps_saved(workdir) == [2, 4, 6]


def test_a_checkpoint_another_host_found_damaged_is_set_aside_here_too(tmp_path, monkeypatch,
                                                                       caplog):
  """This host read step 4 whole; the other host's read failed with damage: both move on."""
  caplog.set_level(logging.INFO)
  workdir = _two_checkpoints(tmp_path)
  allgather, first = checkpointing.multihost_utils.process_allgather, [True]

  def two_hosts(x, **kwargs):   # the first verdict gathered: this one, and the other host's
    if first.pop() if first else False:
      return np.array([int(x), checkpointing.DAMAGED])
    return allgather(x, **kwargs)

  monkeypatch.setattr(checkpointing.multihost_utils, 'process_allgather', two_hosts)
  train.train_and_evaluate(_config(4, checkpoint_every_steps=2), workdir)
  assert (tmp_path / 'checkpoints' / '4.unreadable').is_dir()
  assert 'Restored the checkpoint of step 2' in caplog.text


def test_a_read_only_restore_never_renames(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  for path in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  model = train.create_model(_config(4), 10)
  template = train.create_train_state(_config(4), model, placement.make_mesh())
  with pytest.raises(errors.ConfigError, match='checkpoints/4 is damaged'):
    trained.restore_params(workdir, 'latest', template)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_a_preemption_during_evaluation_saves_and_the_resumed_run_evaluates_first(
    tmp_path, monkeypatch, caplog):
  """SIGTERM arrives after the first of step 2's two evaluation batches. The run saves step 2,
  marked as not evaluated, and stops; the next run evaluates step 2 first, then trains on,
  and ends where a run never stopped ends: same parameters, same schedule, same best."""
  caplog.set_level(logging.INFO)
  config = lambda: _config(4, eval_every_steps=2, checkpoint_every_steps=1000)  # noqa: E731
  straight = str(tmp_path / 'straight')
  expected = train.train_and_evaluate(config(), straight)

  asked = []

  def preempted_in_the_first_evaluation(self):
    asked.append(1)
    return len(asked) == 3   # after steps 1 and 2, then the first evaluation batch

  monkeypatch.setattr(stopping.PreemptionWatch, 'should_stop', preempted_in_the_first_evaluation)
  interrupted = str(tmp_path / 'interrupted')
  assert train.train_and_evaluate(config(), interrupted) == {}
  assert 'Stopped at step 2 before its evaluation' in caplog.text
  assert _steps_saved(interrupted) == [2] and trained.best_step(interrupted) is None
  monkeypatch.undo()
  caplog.set_level(logging.INFO)
  assert train.train_and_evaluate(config(), interrupted) == expected
  assert 'evaluating it first' in caplog.text
  assert_same_tree(saved_state(interrupted, 4), saved_state(straight, 4))
  assert trained.best_step(interrupted) == trained.best_step(straight) is not None


def test_the_learning_rate_drop_is_saved_and_kept_by_a_resumed_run(tmp_path, monkeypatch,
                                                                    caplog):
  """Patience 1 and a validation error that does not improve: the rate drops at the second
  evaluation (step 4); the checkpoint holds lr/10, and a resumed run trains on with it."""
  caplog.set_level(logging.INFO)
  scripted = iter([0.5, 0.5, 0.4])   # steps 2, 4 | restart | 6
  real_evaluate = train.evaluate.evaluate
  monkeypatch.setattr(train.evaluate, 'evaluate',
                      lambda *a, **k: {**real_evaluate(*a, **k), 'top1_error': next(scripted)})
  workdir = str(tmp_path)
  config = lambda steps: _config(steps, eval_every_steps=2, learning_rate=0.01,  # noqa: E731
                                 keep_checkpoints=10, lr_schedule='plateau',
                                 plateau=dict(patience=1, min_delta=0.0, factor=0.1,
                                              max_drops=3))
  train.train_and_evaluate(config(4), workdir)
  assert 'learning rate divided by 10, now 0.001' in caplog.text
  saved_lr = lambda step: float(saved_state(workdir, step)['opt_state'][  # noqa: E731
      'hyperparams']['learning_rate'])
  assert saved_lr(2) == pytest.approx(0.01) and saved_lr(4) == pytest.approx(0.001)
  train.train_and_evaluate(config(6), workdir)
  assert 'Restored the checkpoint of step 4' in caplog.text
  assert saved_lr(6) == pytest.approx(0.001)   # 0.4 improved: no second drop, the first kept
  with open(tmp_path / 'checkpoints' / '6' / 'loop_state' / 'metadata') as f:
    assert json.load(f)['plateau']['drops'] == 1


def test_checkpoints_are_also_saved_by_the_clock(tmp_path):
  """Every log step, once the minutes have passed; here a few milliseconds."""
  config = _config(6, checkpoint_every_steps=1000, log_every_steps=2, keep_checkpoints=10,
                   checkpoint_every_minutes=1e-5)
  train.train_and_evaluate(config, str(tmp_path))
  assert _steps_saved(str(tmp_path)) == [2, 4, 6]


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


def test_the_best_checkpoint_is_kept_beside_the_newest_and_survives_a_restart(tmp_path,
                                                                              monkeypatch):
  # Scripted validation errors at steps 2, 4, 6 | restart | 8, 10: the lowest is at step 4.
  # After the restart 0.35 and 0.32 must not count as the best, though they are this run's best.
  scripted = iter([0.5, 0.3, 0.4, 0.35, 0.32])
  real_evaluate = train.evaluate.evaluate
  monkeypatch.setattr(train.evaluate, 'evaluate',
                      lambda *a, **k: {**real_evaluate(*a, **k), 'top1_error': next(scripted)})
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(6, eval_every_steps=2, keep_checkpoints=2), workdir)
  train.train_and_evaluate(_config(10, eval_every_steps=2, keep_checkpoints=2), workdir)

  assert _steps_saved(workdir) == [4, 8, 10]   # the newest two, and the best: no second copy
  assert trained.best_step(workdir) == 4
  with open(tmp_path / 'checkpoints' / '10' / 'loop_state' / 'metadata') as f:
    assert json.load(f)['best_top1_error'] == 0.3


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
    ('model_axis_size', 3), ('lr_schedule', 'step'), ('momentum', float('nan')),
    ('weight_decay', float('nan')), ('weight_decay', -5e-4), ('learning_rate', float('inf')),
    ('std_rgb', (0.0, 0.0, 0.0))])
def test_bad_fields_are_named(tmp_path, field, value):
  config = _config(2)
  config[field] = value
  with pytest.raises(errors.ConfigError, match=f'--config.{field}='):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('model', ['paper', 'owt'])
def test_the_smallest_patch_trains_and_one_pixel_less_is_refused(tmp_path, model):
  config = _config(1, model=model, image_size=63, resize_size=63, eval_every_steps=1)
  assert train.train_and_evaluate(config, str(tmp_path / 'a'))['examples'] == 13
  config.image_size = 62
  with pytest.raises(errors.ConfigError) as raised:
    train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert ('--config.image_size=62 is too small: the maps vanish at pool after conv5' in
          str(raised.value))
  assert 'at least 63x63' in str(raised.value) and '--config.resize_size=' in str(raised.value)
  assert not (tmp_path / 'b').exists()


def test_small_images_upsampled_when_read_train(tmp_path):
  """32x32 images, as CIFAR's, read at 72x72 with 64x64 patches."""
  from tests.conftest import write_image_folder
  folder = write_image_folder(tmp_path / 'images', train=4, val=2)
  for path in folder.rglob('*.jpg'):
    with Image.open(path) as image:
      image.resize((32, 32)).save(path)
  config = _config(2, dataset=f'image_folder:{folder}', resize_size=72, image_size=64,
                   global_batch_size=4, eval_every_steps=2)
  assert train.train_and_evaluate(config, str(tmp_path / 'work'))['examples'] == 6


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
  with pytest.raises(ValueError, match='paper, owt, demo, imagenette or torchvision'):
    alexnet.get_config('resnet')
