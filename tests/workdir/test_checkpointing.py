"""Checkpoints: damaged ones set aside and the one before restored, other failures stopping the
run with nothing renamed, the best kept beside the newest, another model refused, saves by the
clock."""

import json
import logging
import os

import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import errors, optim, train
from alexnet_jax.parallel import placement
from alexnet_jax.workdir import checkpointing, trained
from tests.conftest import assert_same_tree, plateau_config, saved_state, steps_saved


def test_corrupt_newest_checkpoint_is_set_aside_and_the_one_before_restored(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(4, checkpoint_every_steps=2), workdir)
  assert steps_saved(workdir) == [2, 4]
  good_4 = saved_state(workdir, 4)
  state_dir = tmp_path / 'checkpoints' / '4' / 'state'
  for path in state_dir.rglob('*'):   # truncate every file of the newest checkpoint
    if path.is_file():
      path.write_bytes(b'')
  train.train_and_evaluate(plateau_config(4, checkpoint_every_steps=2), workdir)
  assert 'is damaged' in caplog.text and '4.unreadable' in caplog.text
  assert (tmp_path / 'checkpoints' / '4.unreadable').is_dir()
  assert 'Restored the checkpoint of step 2' in caplog.text
  assert steps_saved(workdir) == [2, 4]
  assert_same_tree(saved_state(workdir, 4), good_4)   # step 4 retrained from step 2, exactly


def _two_checkpoints(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(4, checkpoint_every_steps=2), workdir)
  assert steps_saved(workdir) == [2, 4]
  return workdir


def test_a_checkpoint_of_another_optimiser_stops_the_run_and_is_left_alone(tmp_path,
                                                                           monkeypatch):
  """As after an optax upgrade that changes the optimiser state's tree: not damage."""
  workdir = _two_checkpoints(tmp_path)
  paper_sgd = optim.paper_sgd
  monkeypatch.setattr(optim, 'paper_sgd',
                      lambda *a, **k: optax.chain(paper_sgd(*a, **k), optax.scale_by_adam()))
  with pytest.raises(errors.CheckpointError) as raised:
    train.train_and_evaluate(plateau_config(6, checkpoint_every_steps=2), workdir)
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
    train.train_and_evaluate(plateau_config(6, checkpoint_every_steps=2), workdir)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', restore)   # the storage is back
  train.train_and_evaluate(plateau_config(6, checkpoint_every_steps=2), workdir)
  assert steps_saved(workdir) == [2, 4, 6]


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
  train.train_and_evaluate(plateau_config(4, checkpoint_every_steps=2), workdir)
  assert (tmp_path / 'checkpoints' / '4.unreadable').is_dir()
  assert 'Restored the checkpoint of step 2' in caplog.text


def test_a_read_only_restore_never_renames(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  for path in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  model = train.create_model(plateau_config(4), 10)
  template = train.create_train_state(plateau_config(4), model, placement.make_mesh())
  with pytest.raises(errors.ConfigError, match='checkpoints/4 is damaged'):
    trained.restore_params(workdir, 'latest', template)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_the_best_checkpoint_is_kept_beside_the_newest_and_survives_a_restart(tmp_path,
                                                                              monkeypatch):
  # Scripted validation errors at steps 2, 4, 6 | restart | 8, 10: the lowest is at step 4.
  # After the restart 0.35 and 0.32 must not count as the best, though they are this run's best.
  scripted = iter([0.5, 0.3, 0.4, 0.35, 0.32])
  real_evaluate = train.evaluate.evaluate
  monkeypatch.setattr(train.evaluate, 'evaluate',
                      lambda *a, **k: {**real_evaluate(*a, **k), 'top1_error': next(scripted)})
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(6, eval_every_steps=2, keep_checkpoints=2), workdir)
  train.train_and_evaluate(plateau_config(10, eval_every_steps=2, keep_checkpoints=2), workdir)

  assert steps_saved(workdir) == [4, 8, 10]   # the newest two, and the best: no second copy
  assert trained.best_step(workdir) == 4
  with open(tmp_path / 'checkpoints' / '10' / 'loop_state' / 'metadata') as f:
    assert json.load(f)['best_top1_error'] == 0.3


def test_checkpoint_of_another_model_is_refused(tmp_path):
  train.train_and_evaluate(plateau_config(2), str(tmp_path))
  with pytest.raises(errors.ConfigError, match='different model'):
    train.train_and_evaluate(plateau_config(4, width=0.25), str(tmp_path))
  assert steps_saved(str(tmp_path)) == [2]


def test_checkpoints_are_also_saved_by_the_clock(tmp_path):
  """Every log step, once the minutes have passed; here a few milliseconds."""
  config = plateau_config(6, checkpoint_every_steps=1000, log_every_steps=2, keep_checkpoints=10,
                   checkpoint_every_minutes=1e-5)
  train.train_and_evaluate(config, str(tmp_path))
  assert steps_saved(str(tmp_path)) == [2, 4, 6]
