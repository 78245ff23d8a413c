"""Workdirs on Cloud Storage (`gs://`), against a GCS API on localhost (tests/gcs_emulator.py).

A run on `gs://BUCKET/run` trains, checkpoints, is stopped and resumes where a run on a local
disk ends; the commands that read a workdir read it; a storage that vanishes during a save and
comes back is waited for; one that stays away stops the run with a message, losing nothing.
TensorBoard summaries go through TensorFlow's GCS file system, which no emulator can stand in
for: here they are written to a local folder instead.
"""

import logging
import threading

import orbax.checkpoint as ocp
import pytest
from etils import epath

from alexnet_jax import errors, train
from alexnet_jax.commands import figures, plot_curves
from alexnet_jax.commands.evaluate_workdirs import evaluate_workdirs
from alexnet_jax.loop import stopping, summaries
from alexnet_jax.workdir import trained
from tests import gcs_emulator
from tests.conftest import assert_same_tree, run_config, saved_state

RUN = f'gs://{gcs_emulator.BUCKET}/run'


@pytest.fixture(scope='module')
def storage(tmp_path_factory):
  # One emulator for the module: tensorstore and gcsfs keep the endpoint they first used.
  with gcs_emulator.running(str(tmp_path_factory.mktemp('bucket'))) as emulator:
    yield emulator


@pytest.fixture
def local_summaries(tmp_path, monkeypatch):
  """The event files in a local folder: TensorFlow's GCS file system, which TensorBoard's
  writer uses where TensorFlow is installed, cannot reach the emulator."""
  writer = summaries.event_file_writer.EventFileWriter
  monkeypatch.setattr(summaries.event_file_writer, 'EventFileWriter',
                      lambda logdir, **kw: writer(str(tmp_path / 'summaries'), **kw))
  return tmp_path / 'summaries'


_config = run_config


def _steps(workdir, folder='checkpoints'):
  return sorted(int(p.name) for p in (epath.Path(workdir) / folder).iterdir() if p.name.isdigit())


def _state(workdir, step, like):
  """Checkpoint `step` of `workdir`, read with Orbax directly, placed as `like` is (the
  emulator's generations cannot be read where Orbax would look the placement up)."""
  return ocp.PyTreeCheckpointer().restore(
      f'{workdir}/checkpoints/{step}/state',
      args=ocp.args.PyTreeRestore(item=like,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(like)))


@pytest.mark.slow   # trains three times, and reads the workdir with every command
def test_a_run_on_gs_is_stopped_resumes_and_its_workdir_is_read(storage, local_summaries,
                                                                 tmp_path, monkeypatch, caplog):
  straight = str(tmp_path / 'straight')
  expected = train.train_and_evaluate(_config(4), straight)

  asked = []   # SIGTERM in step 2's evaluation: step 2 is saved, to be evaluated on resume
  monkeypatch.setattr(stopping.PreemptionWatch, 'should_stop',
                      lambda self: asked.append(1) or len(asked) == 3)
  assert train.train_and_evaluate(_config(4), RUN) == {}
  assert _steps(RUN) == [2]
  monkeypatch.setattr(stopping.PreemptionWatch, 'should_stop', lambda self: False)
  caplog.set_level(logging.INFO)
  assert train.train_and_evaluate(_config(4), RUN) == expected
  assert f'Restored the checkpoint of step 2 from {RUN}/checkpoints' in caplog.text
  assert _steps(RUN) == [2, 4]
  assert trained.best_step(RUN) == trained.best_step(straight) is not None
  local = saved_state(straight, 4)
  assert_same_tree(_state(RUN, 4, local), local)
  assert list(local_summaries.glob('events.out.tfevents.*'))

  results = evaluate_workdirs(_config(4), [RUN, straight], 'best')
  assert results[RUN]['step'] == results[straight]['step'] == trained.best_step(straight)
  assert results[RUN]['top1_error'] == results[straight]['top1_error']
  paths = figures.make_figures(_config(4), RUN, 'latest', f'{RUN}/figures', num_images=3,
                               pool_size=16)
  for path in paths.values():
    assert epath.Path(path).read_bytes()[:4] == b'\x89PNG'
  plot_curves.plot(str(local_summaries), f'{RUN}/curves.png')
  assert epath.Path(f'{RUN}/curves.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow   # trains, with the storage stopped for 2 s during a save
def test_a_storage_outage_during_a_save_is_waited_for(storage, local_summaries, tmp_path,
                                                      monkeypatch):
  """The storage vanishes as step 2 is saved and is back 2 s later: the save goes on."""
  workdir = f'gs://{gcs_emulator.BUCKET}/outage'
  save = ocp.CheckpointManager.save
  vanished = []

  def save_during_an_outage(self, step, *args, **kwargs):
    if step == 2 and not vanished:
      vanished.append(step)
      storage.stop()
      threading.Timer(2.0, storage.start).start()
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_during_an_outage)
  train.train_and_evaluate(_config(2), workdir)
  assert vanished and _steps(workdir) == [2]
  local = saved_state(_local_run(tmp_path, 2), 2)
  assert_same_tree(_state(workdir, 2, local), local)


def _local_run(tmp_path, steps):
  workdir = str(tmp_path / f'local{steps}')
  train.train_and_evaluate(_config(steps), workdir)
  return workdir


@pytest.mark.slow   # gcsfs tries 6 times over about 30 s before it gives up
def test_a_storage_that_stays_away_stops_the_run_and_the_next_run_resumes(
    storage, local_summaries, tmp_path, monkeypatch):
  """Gone from the save of step 4 on: the run stops with a message naming step 2, the last
  complete checkpoint. Back again, a new run resumes from step 2."""
  workdir = f'gs://{gcs_emulator.BUCKET}/gone'
  save = ocp.CheckpointManager.save

  def save_with_the_storage_gone(self, step, *args, **kwargs):
    if step == 4:
      self.wait_until_finished()   # step 2 whole in the bucket (saves run in the background)
      storage.stop()
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_with_the_storage_gone)
  with pytest.raises(errors.StorageError) as refused:
    train.train_and_evaluate(_config(4), workdir)
  storage.start()
  message = str(refused.value)
  assert 'step 4' in message and 'could not be reached' in message
  assert f'It resumes from {workdir}/checkpoints/2' in message
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  assert _steps(workdir) == [2]
  expected = train.train_and_evaluate(_config(4), str(tmp_path / 'straight'))
  assert train.train_and_evaluate(_config(4), workdir) == expected
  assert _steps(workdir) == [2, 4]
