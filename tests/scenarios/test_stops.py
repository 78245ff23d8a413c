"""Every way a host stops a run that decodes in worker processes: Ctrl-C once and twice,
SIGTERM to the trainer and to its whole process group, and a signal that lands while the
trainer waits on a slow loader. Each ends as the README says, with no traceback and no
process left, and the run resumed ends bitwise where an uninterrupted one ends."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from alexnet_jax import data, train
from alexnet_jax.benchmarking import processes
from alexnet_jax.data import image_source, synthetic
from tests.conftest import assert_same_tree, process_env, run_config, saved_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The paper's plateau rule: a rate set by the step alone, not by the run's length (the demo's
# cosine), since these runs are stopped early and resumed to a nearer end.
SETTINGS = dict(width=0.125, image_size=64, resize_size=73, global_batch_size=8,
                log_every_steps=2, checkpoint_every_steps=5, eval_every_steps=1000,
                data_workers=2, data_threads=1, lr_schedule='plateau')


def _config(num_train_steps, **overrides):
  return run_config(num_train_steps, **{**SETTINGS, **overrides})


def _newest(workdir) -> int | None:
  steps = [int(p) for p in os.listdir(os.path.join(workdir, 'checkpoints')) if p.isdigit()]
  return max(steps, default=None)


def _start(workdir, num_train_steps, **overrides):
  """main.py in a process group of its own, as a terminal starts a command."""
  env = process_env()
  flags = [f'--config.{k}={v}' for k, v in {
      **SETTINGS, 'num_train_steps': num_train_steps, 'synthetic.train_examples': 64,
      'synthetic.eval_examples': 13, **overrides}.items()]
  return subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/alexnet.py:demo', f'--workdir={workdir}',
       *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize('way', ['ctrl_c', 'ctrl_c_twice', 'sigterm_to_the_trainer',
                                 'sigterm_to_the_group'])
def test_a_run_with_decoding_processes_stops_as_the_readme_says_and_resumes_exactly(
    way, tmp_path):
  workdir = str(tmp_path / 'run')
  process = _start(workdir, 5000)
  deadline = time.monotonic() + 240
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '10')):
    assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
    time.sleep(0.05)
  assert len(processes.group(process.pid)) >= 3   # the trainer and its two decoding processes
  if way == 'sigterm_to_the_trainer':
    process.send_signal(signal.SIGTERM)
  else:   # a terminal's Ctrl-C, or a job system's SIGTERM, reaches the whole group
    stop = signal.SIGTERM if way == 'sigterm_to_the_group' else signal.SIGINT
    os.killpg(process.pid, stop)
    if way == 'ctrl_c_twice':
      time.sleep(0.2)
      os.killpg(process.pid, stop)
  output, _ = process.communicate(timeout=120)
  assert 'Traceback' not in output, output[-5000:]
  deadline = time.monotonic() + 20
  while processes.group(process.pid):
    assert time.monotonic() < deadline, f'left running: {processes.group(process.pid)}'
    time.sleep(0.2)
  stopped_at = _newest(workdir)
  if way == 'ctrl_c_twice':
    assert process.returncode == 130, output[-3000:]
    assert 'Stopped at once by a second Ctrl-C' in output
  else:
    assert process.returncode == 0, output[-3000:]
    assert f'Stopped at step {stopped_at}; checkpoint {workdir}/checkpoints/{stopped_at} ' \
           'saved' in output, output[-3000:]

  end = stopped_at + 3
  train.train_and_evaluate(_config(end), workdir)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(end), straight)
  assert_same_tree(saved_state(workdir, end), saved_state(straight, end))


class SlowWhenFlagged(synthetic.SyntheticSplit):
  """The demo's images, each taking 0.5 s to read while the file `flag` exists: a loader
  that has fallen behind. Read in the decoding processes, which import it from here."""

  def __init__(self, flag: str, *args):
    super().__init__(*args)
    self._flag = flag

  def read_into(self, index, out):
    if os.path.exists(self._flag):
      time.sleep(0.5)
    return super().read_into(index, out)


@pytest.mark.slow
def test_a_signal_while_the_trainer_waits_on_a_slow_loader_saves_at_once(tmp_path, monkeypatch,
                                                                          caplog):
  flag = str(tmp_path / 'slow')
  create = data.create

  def slow_train_split(config, *args, **kwargs):
    dataset = create(config, *args, **kwargs)
    if config.dataset != 'synthetic':
      return dataset
    slow = SlowWhenFlagged(flag, synthetic.TRAIN, config.synthetic.train_examples,
                           config.resize_size, config.synthetic.num_classes)
    split = image_source.Split(slow, 0, len(slow))
    return data.loader.make_data(
        split, image_source.Split(synthetic.SyntheticSplit(
            synthetic.EVAL, config.synthetic.eval_examples, config.resize_size,
            config.synthetic.num_classes), 0, config.synthetic.eval_examples),
        name='slow', num_classes=config.synthetic.num_classes, image_size=config.resize_size,
        global_batch=config.global_batch_size, seed=config.seed,
        reading=data.loader.Reading(workers=2, threads=1))

  monkeypatch.setattr(train.data, 'create', slow_train_split)
  workdir = str(tmp_path / 'run')

  def fall_behind_then_stop():
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '10')):
      time.sleep(0.05)
    pathlib.Path(flag).touch()   # from now on a batch takes 4 s; steps take milliseconds
    time.sleep(4)
    os.kill(os.getpid(), signal.SIGTERM)

  caplog.set_level(logging.INFO)
  threading.Thread(target=fall_behind_then_stop, daemon=True).start()
  start = time.monotonic()
  train.train_and_evaluate(_config(5000), workdir)
  assert 'Received SIGTERM: saving a checkpoint now and stopping.' in caplog.text
  stopped_at = _newest(workdir)
  assert f'Stopped at step {stopped_at}; checkpoint' in caplog.text
  assert time.monotonic() - start < 60
  os.remove(flag)
  end = stopped_at + 3
  train.train_and_evaluate(_config(end), workdir)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(end), straight)
  assert_same_tree(saved_state(workdir, end), saved_state(straight, end))


@pytest.mark.slow
def test_a_kill_during_an_asynchronous_save_resumes_from_the_checkpoint_before(tmp_path):
  """SIGKILL while step 10's checkpoint is being written in the background (its temporary
  folder is there): that step is no checkpoint, the run resumes from step 5 and ends where an
  uninterrupted run ends."""
  workdir = str(tmp_path / 'run')
  wide = dict(width=0.5)   # a checkpoint of about 110 MB: long enough to be caught writing
  process = _start(workdir, 5000, **wide)
  checkpoints = pathlib.Path(workdir, 'checkpoints')
  deadline = time.monotonic() + 300
  while not list(checkpoints.glob('10.orbax-checkpoint-tmp*')):
    assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
    time.sleep(0.002)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait(timeout=60)
  assert _newest(workdir) == 5, sorted(os.listdir(checkpoints))
  end = 13
  train.train_and_evaluate(_config(end, **wide), workdir)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(end, **wide), straight)
  assert_same_tree(saved_state(workdir, end), saved_state(straight, end))
