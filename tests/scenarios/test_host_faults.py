"""One host's fault stops every host within seconds, each host's log naming the failing host and
its message in one line, with no abort or stack: two processes joined on 127.0.0.1, a damaged
record only host 1 reads, and a checkpoint host 1's storage refuses."""

import os
import re
import time

import pytest

from alexnet_jax import data
from tests.scenarios.test_damaged_store import PER_SHARD, _config, _copy, _invert_record
from tests.scenarios.test_damaged_store import pristine  # noqa: F401  (a fixture used here)
from tests.scenarios.test_multiprocess import SETTINGS, _saved_state, _start_two

STEPS = 12   # two epochs of the store: 6 steps of 8 images each
# Written by a healthy run at step 3 (checkpoint_every_steps=3), before any fault.
FIRST_CHECKPOINT = 3
# JAX's shutdown barrier gave up after 5 minutes; these stops take seconds.
PROMPT_S = 60


def _first_read_by_host_1_only(store, after: int) -> tuple[int, int]:
  """(step, split index) of an image that host 1 of 2 is the first to read, at the earliest
  step after `after`, as the loader reads the undamaged store."""
  first = {}
  for host in (0, 1):
    batches = data.create(_config(store, 1), 8, process_index=host,
                          process_count=2).train_batches(0)
    for step in range(1, STEPS + 1):
      for index in next(batches).index:
        first[int(index)] = min(first.get(int(index), (STEPS + 1, host)), (step, host))
    batches.close()
  return min((step, index) for index, (step, host) in first.items()
             if host == 1 and step > after)


def _run_until_both_stop(workdir, **start) -> list[str]:
  """Both processes' output; they must end within PROMPT_S of the first checkpoint."""
  processes = _start_two(workdir, STEPS, **start)
  first = os.path.join(workdir, 'checkpoints', str(FIRST_CHECKPOINT))
  deadline = time.monotonic() + 240
  while not os.path.isdir(first) and any(p.poll() is None for p in processes):
    assert time.monotonic() < deadline
    time.sleep(0.1)
  saved_at = time.monotonic()
  outputs = [p.communicate(timeout=PROMPT_S + 240)[0] for p in processes]
  waited = time.monotonic() - saved_at
  assert waited < PROMPT_S, f'the hosts took {waited:.0f} s to stop'
  for p, output in zip(processes, outputs):
    assert p.returncode == 1, output[-3000:]
    for sign in ('Traceback', 'Fatal Python error', 'Check failure', 'Aborted'):
      assert sign not in output, output[-5000:]
  return outputs


def _the_one_error_line(outputs) -> str:
  """The line each host ends with, the same on both."""
  lines = [re.findall(r'^error: (.*)$', output, re.M) for output in outputs]
  assert len(lines[0]) == 1 and lines[0] == lines[1], outputs[0][-3000:] + outputs[1][-3000:]
  return lines[0][0]


def _steps_saved(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


@pytest.mark.slow
def test_a_record_one_host_cannot_read_stops_both_at_the_same_step_saved(pristine, tmp_path):
  # Read after step 4: the step before it is saved by the stop alone.
  step, index = _first_read_by_host_1_only(pristine, after=FIRST_CHECKPOINT + 1)
  assert step <= 2 * FIRST_CHECKPOINT
  store = _copy(pristine, tmp_path)
  shard, record = divmod(index, PER_SHARD)
  shard_name = f'train-{shard:05d}-of-00006.array_record'
  _invert_record(store, shard_name, record)
  workdir = str(tmp_path / 'run')
  outputs = _run_until_both_stop(workdir, settings={**SETTINGS, 'dataset': store})
  line = _the_one_error_line(outputs)
  assert line.startswith(f'host 1 of 2 stopped the job: The store {store} is damaged: record '
                         f'{record} of its shard {shard_name}'), line
  assert (f'Stopped at step {step - 1}, before step {step}, which reads it; checkpoint '
          f'{workdir}/checkpoints/{step - 1} saved.') in line
  assert _steps_saved(workdir) == sorted([str(FIRST_CHECKPOINT), str(step - 1)])
  assert int(_saved_state(workdir, step - 1)['step']) == step - 1


@pytest.mark.slow
def test_a_validation_record_one_host_cannot_read_stops_both_with_the_step_saved(pristine,
                                                                                 tmp_path):
  batches = data.create(_config(pristine, 1), 8, process_index=1,
                        process_count=2).eval_batches()
  index = int(next(batches).index[0])   # read by host 1 alone, in the first evaluation batch
  batches.close()
  store = _copy(pristine, tmp_path)
  shard, record = divmod(index, PER_SHARD)
  _invert_record(store, f'validation-{shard:05d}-of-00002.array_record', record)
  workdir = str(tmp_path / 'run')
  evaluated = FIRST_CHECKPOINT + 1
  outputs = _run_until_both_stop(workdir, settings={**SETTINGS, 'dataset': store,
                                                    'eval_every_steps': evaluated})
  line = _the_one_error_line(outputs)
  assert line.startswith(f'host 1 of 2 stopped the job: The store {store} is damaged: record '
                         f'{record} of its shard validation-{shard:05d}'), line
  assert (f'Stopped at step {evaluated}, whose evaluation reads it; checkpoint '
          f'{workdir}/checkpoints/{evaluated} saved.') in line
  assert _steps_saved(workdir) == [str(FIRST_CHECKPOINT), str(evaluated)]


@pytest.mark.slow
@pytest.mark.parametrize('when', ['start', 'background'])
def test_a_save_one_host_cannot_write_stops_both_with_the_newest_checkpoint(when, tmp_path,
                                                                            monkeypatch):
  failing = 2 * FIRST_CHECKPOINT
  monkeypatch.setenv('SAVE_FAILS', f'1:{failing}:{when}')
  workdir = str(tmp_path)
  outputs = _run_until_both_stop(workdir, program='tests/scenarios/save_fails_on_one_host.py')
  line = _the_one_error_line(outputs)
  assert line.startswith(f'host 1 of 2 stopped the job: The checkpoint of step {failing} '
                         f'could not be written to {workdir}/checkpoints: no space is left on '
                         'the device'), line
  assert line.endswith(f'It resumes from {workdir}/checkpoints/{FIRST_CHECKPOINT}.'), line
  assert _steps_saved(workdir) == [str(FIRST_CHECKPOINT)]   # and nothing half-written

