"""What a run leaves in its workdir when it is refused, when another run holds the workdir,
when an update stops being finite, and what a resume with another batch size says."""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import errors, train
from alexnet_jax.commands import weights
from alexnet_jax.loop import saved_state as loop_saved_state
from alexnet_jax.parallel import steps
from configs import alexnet
from tests.conftest import plateau_config, saved_state, steps_saved

ROOT = pathlib.Path(__file__).resolve().parents[2]
OWT_NARROW = ROOT / 'tests' / 'fixtures' / 'owt_narrow.pth'


def _snapshot(folder: pathlib.Path) -> dict:
  """Every file and folder under `folder`: a file's bytes, a folder's None."""
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in sorted(folder.rglob('*'))}


def test_a_refused_resume_leaves_the_workdir_byte_for_byte(tmp_path):
  workdir = tmp_path / 'imported'
  weights.import_weights(str(OWT_NARROW), str(workdir), alexnet.get_config('torchvision'))
  before = _snapshot(workdir)
  assert 'model.json' in before and json.loads(before['model.json'])['source']

  with pytest.raises(errors.ConfigError, match='holds a different model'):
    train.train_and_evaluate(plateau_config(2), str(workdir))   # the demo's model, not the file's
  assert _snapshot(workdir) == before


def test_a_run_refused_on_a_new_workdir_leaves_no_folder(tmp_path):
  workdir = tmp_path / 'new' / 'run'
  with pytest.raises(errors.ConfigError, match='color_stats=computed'):
    train.train_and_evaluate(plateau_config(2, color_stats='computed'), str(workdir))
  assert not workdir.exists()


def _hold_in_another_process(workdir) -> subprocess.Popen:
  code = ('import sys, time; from alexnet_jax.workdir import lock; '
          'lock.hold(sys.argv[1]); print("held", flush=True); time.sleep(600)')
  holder = subprocess.Popen([sys.executable, '-c', code, str(workdir)], cwd=ROOT,
                            env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == 'held\n'
  return holder


def test_a_second_run_is_refused_naming_the_first_and_a_killed_one_blocks_nothing(tmp_path):
  workdir = tmp_path / 'work'
  holder = _hold_in_another_process(workdir)
  try:
    before = _snapshot(workdir)
    assert list(before) == ['run.lock']
    with pytest.raises(errors.ConfigError, match='is in use by another run') as refused:
      train.train_and_evaluate(plateau_config(2), str(workdir))
    assert f'process {holder.pid} on host {socket.gethostname()}' in str(refused.value)
    assert _snapshot(workdir) == before
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert (workdir / 'run.lock').exists()   # what the killed run left: no lock any more

  train.train_and_evaluate(plateau_config(2), str(workdir))
  assert steps_saved(workdir) == [2]
  assert not (workdir / 'run.lock').exists()


def test_an_update_that_overflows_is_not_saved_and_the_last_finite_checkpoint_is_named(
    tmp_path):
  # Step 3's loss and gradient are finite, but a rate and a decay this large overflow the
  # parameters it updates: saved, they would be called good until step 4's loss said not.
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(2, lr_schedule='cosine'), workdir)
  with pytest.raises(errors.DivergenceError) as raised:
    train.train_and_evaluate(plateau_config(4, lr_schedule='cosine', checkpoint_every_steps=1,
                                     log_every_steps=1, learning_rate=1e30,
                                     weight_decay=1e30), workdir)
  message = str(raised.value)
  assert 'diverged at step 3: the update' in message and 'is not finite' in message
  assert f'the last good checkpoint is {tmp_path / "checkpoints" / "2"}' in message
  assert steps_saved(workdir) == [2]
  saved = saved_state(workdir, 2)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves((saved['params'], saved['opt_state'])))


def test_a_resume_with_another_batch_size_says_what_changes(tmp_path, caplog):
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(4), workdir)   # 64 examples in batches of 8: 8 per epoch
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(plateau_config(6, global_batch_size=16), workdir)   # 4 per epoch
  said = [r.getMessage() for r in caplog.records if 'global_batch_size' in r.getMessage()]
  assert len(said) == 1 and '\n' not in said[0]
  assert ('step 4 is now epoch 1.00 (it was 0.50), the next batch starts at example 0 of '
          "epoch 1's order (it was example 32 of epoch 0's" in said[0])
  assert 'the run ends at step 6 (epoch 1.50)' in said[0]
  assert steps_saved(workdir)[-1] == 6
  assert loop_saved_state.batch_size_change(4, 16, 16, 64, 6) is None   # the same batch: no word


def test_a_non_finite_checkpoint_an_earlier_version_saved_is_set_aside(tmp_path, monkeypatch,
                                                                       caplog):
  workdir = str(tmp_path)
  train.train_and_evaluate(plateau_config(2, lr_schedule='cosine'), workdir)
  # As before the state was checked before a save: step 3 overflows and is saved all the same.
  with monkeypatch.context() as patched:
    patched.setattr(steps, 'state_is_finite', lambda state: True)
    with pytest.raises(errors.DivergenceError, match='step 4'):
      train.train_and_evaluate(plateau_config(4, lr_schedule='cosine', checkpoint_every_steps=1,
                                       log_every_steps=1, learning_rate=1e30,
                                       weight_decay=1e30), workdir)
  assert steps_saved(workdir) == [2, 3]

  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(plateau_config(4, lr_schedule='cosine'), workdir)
  assert 'not all finite' in caplog.text and '3.unreadable' in caplog.text
  assert (tmp_path / 'checkpoints' / '3.unreadable').is_dir()
  saved = saved_state(workdir, 4)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves((saved['params'], saved['opt_state'])))
