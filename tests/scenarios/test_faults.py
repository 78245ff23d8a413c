"""Whole runs stopped and resumed: kills, a preemption during an evaluation, a learning-rate
drop kept, divergence, the smallest patch, an unwritable workdir."""

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
import pytest

from alexnet_jax import errors, train
from alexnet_jax.benchmarking import processes
from alexnet_jax.loop import stopping
from alexnet_jax.workdir import trained
from tests.conftest import assert_same_tree, plateau_config, process_env, saved_state, steps_saved

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _start_main(workdir, num_train_steps, data_workers=0):
  env = process_env()
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
  killed_at = steps_saved(interrupted)[-1]
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
  stopped_at = steps_saved(interrupted)[-1]
  assert stopped_at >= 20, output[-3000:]

  # Finish both in-process to a common end just past the preemption.
  end = stopped_at + 3
  train.train_and_evaluate(plateau_config(end, checkpoint_every_steps=5), interrupted)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(plateau_config(end, checkpoint_every_steps=5), straight)
  assert_same_tree(saved_state(interrupted, end), saved_state(straight, end))


def test_a_preemption_during_evaluation_saves_and_the_resumed_run_evaluates_first(
    tmp_path, monkeypatch, caplog):
  """SIGTERM arrives after the first of step 2's two evaluation batches. The run saves step 2,
  marked as not evaluated, and stops; the next run evaluates step 2 first, then trains on,
  and ends where a run never stopped ends: same parameters, same schedule, same best."""
  caplog.set_level(logging.INFO)
  config = lambda: plateau_config(4, eval_every_steps=2, checkpoint_every_steps=1000)  # noqa: E731
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
  assert steps_saved(interrupted) == [2] and trained.best_step(interrupted) is None
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
  config = lambda steps: plateau_config(steps, eval_every_steps=2, learning_rate=0.01,  # noqa: E731
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


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # A huge learning rate: step 1 is finite, the parameters then overflow at step 2.
  config = plateau_config(6, checkpoint_every_steps=1, log_every_steps=1, learning_rate=1e30)
  with pytest.raises(errors.DivergenceError) as raised:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(raised.value)
  assert 'step 2' in message and str(tmp_path / 'checkpoints' / '1') in message
  assert steps_saved(str(tmp_path)) == [1]
  saved = saved_state(str(tmp_path), 1)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved['params']))


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  with pytest.raises(errors.ConfigError, match='cannot be written'):
    train.train_and_evaluate(plateau_config(2), str(blocker / 'workdir'))


@pytest.mark.parametrize('model', [pytest.param('paper', marks=pytest.mark.slow), 'owt'])
def test_the_smallest_patch_trains_and_one_pixel_less_is_refused(tmp_path, model):
  config = plateau_config(1, model=model, image_size=63, resize_size=63, eval_every_steps=1)
  assert train.train_and_evaluate(config, str(tmp_path / 'a'))['examples'] == 13
  config.image_size = 62
  with pytest.raises(errors.ConfigError) as raised:
    train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert ('--config.image_size=62 is too small: the maps vanish at pool after conv5' in
          str(raised.value))
  assert 'at least 63x63' in str(raised.value) and '--config.resize_size=' in str(raised.value)
  assert not (tmp_path / 'b').exists()


