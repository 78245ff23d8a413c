"""Two processes joined by jax.distributed on 127.0.0.1, against one process with as many devices."""

import os
import re
import signal
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import train
from alexnet_jax.workdir import lock
from tests.conftest import process_env, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow   # processes joined over 127.0.0.1: 20 to 35 s each
SETTINGS = dict(width=0.125, image_size=64, resize_size=73, global_batch_size=8, data_workers=0,
                log_every_steps=2, checkpoint_every_steps=3, eval_every_steps=1000)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two(workdir, num_train_steps, heartbeat=100, devices_each=1, settings=None,
               program='main.py'):
  """Two processes of `program` (main.py, or a test's version of it) joined on 127.0.0.1;
  `workdir` may be a pair, one each."""
  workdirs = workdir if isinstance(workdir, (list, tuple)) else [workdir] * 2
  port = _free_port()
  env = process_env(devices_each)
  flags = [f'--config.{k}={v}' for k, v in (settings or SETTINGS).items()]
  flags += [f'--config.num_train_steps={num_train_steps}', '--config.synthetic.eval_examples=13',
            '--config.synthetic.train_examples=64']
  return [subprocess.Popen(
      [sys.executable, program, '--config=configs/alexnet.py:demo', f'--workdir={workdirs[i]}',
       *flags, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}', f'--heartbeat_timeout_seconds={heartbeat}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _saved_state(workdir, step):
  """A saved state as NumPy arrays, whatever devices wrote it."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, restore_args=as_numpy)


def _two_processes_against_this_one(tmp_path, steps: int, settings: dict, devices_each: int,
                                    mesh: str):
  """Trains `steps` in two joined processes and in this one; their parameters must agree."""
  two = str(tmp_path / 'two')
  for p in _start_two(two, steps, devices_each=devices_each, settings=settings):
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output[-3000:]
    assert f'a mesh of {mesh}' in output, output[-3000:]
  config = tiny_config()
  config.update(settings)
  config.num_train_steps = steps
  one = str(tmp_path / 'one')
  train.train_and_evaluate(config, one)
  saved_one, saved_two = _saved_state(one, steps), _saved_state(two, steps)
  for a, b in zip(jax.tree.leaves(saved_one['params']), jax.tree.leaves(saved_two['params']),
                  strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
  _two_processes_against_this_one(tmp_path, 6, SETTINGS, devices_each=1,
                                  mesh="{'batch': 2, 'model': 1}")


def test_two_hosts_of_two_devices_split_the_classifier_as_one_host_does(tmp_path):
  """owt on a 2 x 2 mesh over two processes, each host's two devices one `model` group,
  against a 1 x 2 mesh in this process: the same global batch, the same parameters."""
  _two_processes_against_this_one(tmp_path, 3, {**SETTINGS, 'model_axis_size': 2,
                                                'dropout_rate': 0.0},
                                  devices_each=2, mesh="{'batch': 2, 'model': 2}")


def test_a_workdir_each_host_has_its_own_of_is_refused(tmp_path):
  """As /tmp on each host: every process sees a folder, but not the same one."""
  processes = _start_two([str(tmp_path / 'host0'), str(tmp_path / 'host1')], 4)
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode != 0, output[-3000:]
    assert 'is not shared by all hosts: process 1 cannot see' in output, output[-3000:]
    assert 'Traceback' not in output
  assert not (tmp_path / 'host0' / 'checkpoints').exists()


def test_a_workdir_another_run_holds_is_refused_on_every_host(tmp_path):
  """Process 0 finds it locked; process 1, which takes no lock, stops with it."""
  held = lock.hold(str(tmp_path))   # this process: the run that holds it
  try:
    processes = _start_two(str(tmp_path), 4)
    outputs = [p.communicate(timeout=300)[0] for p in processes]
  finally:
    held.release()
  for p, output in zip(processes, outputs):
    assert p.returncode != 0, output[-3000:]
    assert 'is in use by another run' in output and 'Traceback' not in output, output[-3000:]
  assert f'process {os.getpid()} on host' in outputs[0]
  assert os.listdir(tmp_path) == []


def test_when_one_process_dies_the_other_stops_with_an_error(tmp_path):
  workdir = str(tmp_path)
  survivor, victim = _start_two(workdir, 100_000, heartbeat=5)
  deadline = time.monotonic() + 240
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '3')):
    assert survivor.poll() is None and time.monotonic() < deadline
    time.sleep(0.1)
  victim.kill()
  victim.wait()
  killed_at = time.monotonic()
  output, _ = survivor.communicate(timeout=120)
  waited = time.monotonic() - killed_at
  assert survivor.returncode != 0
  assert waited < 5 + 30, f'the survivor took {waited:.0f} s to stop'   # heartbeat: 5 s
  # Its next step with the dead peer fails (ours), or JAX's heartbeat check stops it first.
  assert ('Most likely another host of the job stopped' in output or
          'another task died' in output), output[-3000:]


def test_sigterm_to_one_process_stops_both_after_the_same_step(tmp_path):
  workdir = str(tmp_path)
  processes = _start_two(workdir, 100_000)
  deadline = time.monotonic() + 240
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '3')):
    assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
    time.sleep(0.1)
  processes[1].send_signal(signal.SIGTERM)   # a preemption notice reaches one host only
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  stops = [re.findall(r'Stopped at step (\d+)', output) for output in outputs]
  assert stops[0] == stops[1] and len(stops[0]) == 1, outputs[0][-2000:] + outputs[1][-2000:]
  step = int(stops[0][0])
  assert int(_saved_state(workdir, step)['step']) == step
