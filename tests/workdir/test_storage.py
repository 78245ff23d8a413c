"""Storage faults: a full disk during a save stops the run with a message, loses nothing
complete, and the next run resumes from the newest complete state."""

import errno
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import errors, train
from alexnet_jax.workdir import color_stats, storage
from tests.conftest import assert_same_tree, run_config, saved_state


SAVE = ocp.CheckpointManager.save


_config = run_config   # tiny_config saves every 2 steps; evaluated every 2 too
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def improving(monkeypatch):
  """Every evaluation's top-1 error below the one before it: each one is the best so far."""
  real_evaluate, count = train.evaluate.evaluate, []

  def evaluate(*args, **kwargs):
    metrics = real_evaluate(*args, **kwargs)
    count.append(1)
    return metrics if metrics is None else {**metrics, 'top1_error': 1 / (1 + len(count))}

  monkeypatch.setattr(train.evaluate, 'evaluate', evaluate)
  return count


@pytest.fixture
def disk_full_at_step_4(monkeypatch):
  """The checkpoint of step 4 meets a full disk, after Orbax made its temporary folder;
  every other save goes through."""
  save = SAVE

  def full(manager, step, *args, **kwargs):
    if step == 4:
      (manager.directory / f'{step}.orbax-checkpoint-tmp-1234').mkdir()
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "...": '
                       '[OS error 28: No space left on device]')
    return save(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  return monkeypatch


def test_a_full_disk_stops_the_run_with_what_to_do_and_the_next_run_loses_nothing(
    tmp_path, improving, disk_full_at_step_4, caplog):
  workdir = str(tmp_path / 'full')
  with pytest.raises(errors.StorageError) as raised:
    train.train_and_evaluate(_config(6), workdir)
  message = str(raised.value)
  assert f'The checkpoint of step 4 could not be written to {workdir}/checkpoints' in message
  assert 'no space is left on the device' in message and 'needs about' in message
  assert 'GiB are free there' in message and '--config.keep_checkpoints' in message
  assert f'It resumes from {workdir}/checkpoints/2' in message
  assert sorted(os.listdir(tmp_path / 'full' / 'checkpoints')) == ['2']   # no partial left

  disk_full_at_step_4.setattr(ocp.CheckpointManager, 'save', SAVE)   # space freed
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(_config(6), workdir)
  assert f'Restored the checkpoint of step 2 from {workdir}/checkpoints' in caplog.text
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(6), straight)
  assert_same_tree(saved_state(workdir, 6), saved_state(straight, 6))


def test_too_little_space_for_the_checkpoints_is_warned_at_start_up(tmp_path, monkeypatch,
                                                                     caplog):
  monkeypatch.setattr(storage, 'free_bytes', lambda directory: 1000)
  train.train_and_evaluate(_config(1), str(tmp_path))
  assert 'has 0.00 GiB free; 5 checkpoints of' in caplog.text   # keep 3, the best, one written


def test_a_full_disk_leaves_no_half_written_colour_statistics(tmp_path, monkeypatch):
  stats = {'mean_rgb': [1.0, 2.0, 3.0], 'pca_eigval': [1.0, 0.5, 0.1],
           'pca_eigvec': np.eye(3).tolist(), 'images': 4,
           'mean_image': np.zeros((4, 4, 3), np.float32)}
  real_write = color_stats.epath.Path.write_bytes

  def full(path, data):
    if path.name.startswith(color_stats.FILENAME):
      real_write(path, data[:10])   # as far as the disk took it
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_write(path, data)

  monkeypatch.setattr(color_stats.epath.Path, 'write_bytes', full)
  with pytest.raises(errors.StorageError, match='no space is left on the device'):
    color_stats.save(stats, str(tmp_path))
  assert not (tmp_path / color_stats.FILENAME).exists()   # a run does not take it for whole


@pytest.mark.parametrize('error', [
    ConnectionRefusedError(errno.ECONNREFUSED, 'Connect call failed'),   # aiohttp, under gcsfs
    ValueError('ABORTED: All 32 retry attempts failed: CURL error Could not connect to server'),
    RuntimeError("Error executing an HTTP request: libcurl code 7 meaning 'Couldn't connect to "
                 "server'"),   # TensorFlow's GCS file system
])
def test_a_storage_that_cannot_be_reached_is_told_apart_from_a_full_one(error):
  what, fix = storage.storage_failure(error)
  assert what == 'the storage could not be reached' and 'network' in fix
  what, fix = storage.storage_failure(OSError(errno.ENOSPC, 'No space left on device'))
  assert what == 'no space is left on the device' and '--config.keep_checkpoints' in fix
  assert storage.storage_failure(ValueError('shapes do not match')) is None


@pytest.mark.slow   # trains twice
def test_a_full_disk_under_the_summaries_stops_the_run_and_the_next_run_loses_nothing(
    tmp_path, monkeypatch):
  """TensorBoard's event writer meets a full disk at step 4's summaries, before step 4 is
  saved: the run stops with a message, checkpoint 2 stays, and a rerun ends where a run that
  never stopped ends."""
  from alexnet_jax.loop import summaries
  writer = summaries.event_file_writer.EventFileWriter
  add_event = writer.add_event

  def full(self, event):
    if event.step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return add_event(self, event)

  monkeypatch.setattr(writer, 'add_event', full)
  workdir = str(tmp_path / 'full')
  with pytest.raises(errors.StorageError) as raised:
    train.train_and_evaluate(_config(6), workdir)
  message = str(raised.value)
  assert f'The TensorBoard summaries could not be written to {workdir}' in message
  assert 'no space is left on the device' in message
  assert f'It resumes from {workdir}/checkpoints/2' in message
  monkeypatch.setattr(writer, 'add_event', add_event)
  train.train_and_evaluate(_config(6), workdir)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(6), straight)
  assert_same_tree(saved_state(workdir, 6), saved_state(straight, 6))


def test_a_workdir_whose_storage_cannot_be_reached_is_refused_with_what_to_check(monkeypatch):
  from alexnet_jax import config_checks

  class OutOfReach:   # a gs:// path as TensorFlow's file system meets it without a network
    def __init__(self, *parts):
      pass

    def __truediv__(self, name):
      return self

    def mkdir(self, *args, **kwargs):
      raise OSError("Error executing an HTTP request: libcurl code 6 meaning 'Could not "
                    "resolve hostname', error details: Could not resolve host: "
                    "www.googleapis.com")

  monkeypatch.setattr(config_checks.epath, 'Path', OutOfReach)
  with pytest.raises(errors.ConfigError, match='check the network, the bucket and its '
                     'permissions from this host'):
    config_checks.check_workdir('gs://a-bucket/run')


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB file system of its own (tmpfs), mounted for the test: root only."""
  mount = tmp_path / 'small'
  mount.mkdir()
  result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount)],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f'cannot mount a small file system here ({result.stderr.strip()}): needs root')
  yield mount
  subprocess.run(['umount', str(mount)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_prints_one_message_and_no_traceback_and_a_rerun_loses_nothing(
    small_disk, tmp_path):
  """main.py on a file system that fills at the second save: Orbax's and tensorstore's
  threads meet the full disk too, but the run prints one message and no traceback; with
  room made, the same command resumes and ends where a run on a large disk ends."""
  workdir = small_disk / 'run'
  flags = [f'--config.{k}={v}' for k, v in dict(
      width=0.125, image_size=64, resize_size=73, global_batch_size=8, log_every_steps=2,
      checkpoint_every_steps=2, eval_every_steps=1000, num_train_steps=8,
      **{'synthetic.train_examples': 64, 'synthetic.eval_examples': 13}).items()]
  command = [sys.executable, 'main.py', '--config=configs/alexnet.py:demo',
             f'--workdir={workdir}', *flags]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  full = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  output = full.stdout + full.stderr
  assert full.returncode == 1, output[-3000:]
  assert 'Traceback' not in output and 'Event loop is closed' not in output, output[-5000:]
  assert output.count('error: The checkpoint of step') == 1, output[-3000:]
  assert 'no space is left on the device' in output
  subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
  again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(8, checkpoint_every_steps=2, eval_every_steps=1000,
                                   width=0.125), straight)
  assert_same_tree(saved_state(str(workdir), 8), saved_state(straight, 8))
