"""A damaged store: caught when it opens where it can be, else where a record is read, with the
step reached saved and one message; skipped on request, with a resumed run equal to an
uninterrupted one. The damage is real: bytes inverted inside a shard, a shard cut short, a
shard deleted."""

import hashlib
import logging
import os
import pathlib
import pickle
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module

from alexnet_jax import data, errors, train
from alexnet_jax.commands.evaluate_workdirs import evaluate_workdirs
from alexnet_jax.data import prepare
from alexnet_jax.data.host_batch import DecodeSplit
from alexnet_jax.loop import summaries
from tests.conftest import (assert_same_tree, process_env, run_config, saved_state,
                            write_image_folder)

ROOT = pathlib.Path(__file__).resolve().parents[2]
PER_SHARD = 8
# 16 training images a class, 48 in all: 6 steps of 8 an epoch, each image once an epoch.
TRAIN_SHARD, TRAIN_RECORD = 'train-00002-of-00006.array_record', 3
VAL_SHARD, VAL_RECORD = 'validation-00001-of-00002.array_record', 2


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  folder = write_image_folder(tmp_path_factory.mktemp('images'), train=16, val=5)
  out = tmp_path_factory.mktemp('store') / 'images_73'
  prepare.prepare(f'image_folder:{folder}', str(out),
                  prepare.Options(size=73, images_per_shard=PER_SHARD, workers=0),
                  progress=False)
  return out


def _copy(pristine, tmp_path) -> pathlib.Path:
  store = tmp_path / 'store'
  shutil.copytree(pristine, store)
  return store


def _invert_record(store: pathlib.Path, shard: str, index: int) -> None:
  """Inverts 64 bytes in the middle of record `index` of `shard`, where the file holds it."""
  reader = array_record_module.ArrayRecordReader(str(store / shard))
  record = reader.read([index])[0]
  reader.close()
  path = store / shard
  content = bytearray(path.read_bytes())
  at = content.find(record)
  assert at > 0 and content.find(record, at + 1) < 0   # stored once, whole
  middle = at + len(record) // 2
  content[middle:middle + 64] = bytes(255 - b for b in content[middle:middle + 64])
  path.write_bytes(bytes(content))


def _config(store, num_train_steps, **overrides):
  return run_config(num_train_steps, **{
      'dataset': str(store), 'eval_every_steps': 1000, 'checkpoint_every_steps': 1000,
      **overrides})


def _fingerprint(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _steps_reading(pristine, split_index: int, end: int) -> list[int]:
  """The steps up to `end` whose batches hold image `split_index` of the training split, as
  the loader reads the undamaged store."""
  wanted = _fingerprint(dataset_source(pristine)[split_index]['image'])
  stream = data.create(_config(pristine, 1), 8).train_batches(0)
  try:
    return [step for step in range(1, end + 1)
            if wanted in {_fingerprint(image) for image in next(stream).image}]
  finally:
    stream.close()


def dataset_source(store, split='train'):
  return data.store.open_store(store).source_of(split)


def _steps_saved(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, 'checkpoints')) if p.isdigit())


@pytest.mark.parametrize('damage', ['cut', 'missing'])
def test_a_cut_or_missing_shard_stops_the_run_before_anything_compiles(damage, pristine,
                                                                        tmp_path, monkeypatch):
  store = _copy(pristine, tmp_path)
  shard = store / TRAIN_SHARD
  if damage == 'cut':
    shard.write_bytes(shard.read_bytes()[:-1000])
  else:
    shard.unlink()

  def compiled(*args, **kwargs):
    raise AssertionError('the model was made before the store was checked')

  monkeypatch.setattr(train, 'create_train_state', compiled)
  workdir = tmp_path / 'run'
  with pytest.raises(errors.DataError) as raised:
    train.train_and_evaluate(_config(store, 4), str(workdir))
  message = str(raised.value)
  assert f'The store {store} is damaged: its shard {TRAIN_SHARD} ' in message
  assert ('is missing' if damage == 'missing' else 'cannot be opened (') in message
  assert f'delete {shard}, its .json and {store / "metadata.json"}' in message
  assert not (workdir / 'checkpoints').exists() or not os.listdir(workdir / 'checkpoints')
  if damage == 'missing':
    return
  # Doing as the message says writes that shard again, and the store is the one prepared.
  command = re.search(r'^  (python -m alexnet_jax\.commands\.prepare .*)$', message, re.M)[1]
  for path in (shard, shard.with_suffix('.json'), store / 'metadata.json'):
    path.unlink()
  redone = subprocess.run([sys.executable, *shlex.split(command)[1:], '--workers=0'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert redone.returncode == 0, redone.stderr[-3000:]
  assert '7 of 8 shards are already written; writing the other 1.' in redone.stderr
  assert sorted(os.listdir(store)) == sorted(os.listdir(pristine))
  for name in os.listdir(pristine):
    assert (store / name).read_bytes() == (pristine / name).read_bytes(), name


def test_a_damaged_record_names_its_shard_and_place_and_crosses_processes_whole(pristine,
                                                                              tmp_path):
  store = _copy(pristine, tmp_path)
  _invert_record(store, TRAIN_SHARD, TRAIN_RECORD)
  source = dataset_source(store)
  split_index = 2 * PER_SHARD + TRAIN_RECORD
  for index in (split_index - 1, split_index + 1):   # its neighbours still read
    assert source[index]['image'].shape == (73, 73, 3)
  with pytest.raises(errors.DamagedRecordError) as raised:
    source[split_index]
  error = raised.value
  assert (error.store, error.split, error.shard, error.shard_index, error.split_index) == (
      str(store), 'train', TRAIN_SHARD, TRAIN_RECORD, split_index)
  assert 'Riegeli' in error.cause and '--config.skip_damaged_records=true' in str(error)
  copied = pickle.loads(pickle.dumps(error))   # as a decoding process sends it
  assert type(copied) is errors.DamagedRecordError and str(copied) == str(error)


def test_skipping_replaces_a_damaged_record_by_another_of_its_global_batch(pristine, tmp_path):
  store = _copy(pristine, tmp_path)
  _invert_record(store, TRAIN_SHARD, TRAIN_RECORD)
  split_index = 2 * PER_SHARD + TRAIN_RECORD
  step = _steps_reading(pristine, split_index, 6)[0]
  clean = next(data.create(_config(pristine, 1), 8).train_batches(step - 1))
  config = _config(store, 1, skip_damaged_records=True)
  skipped = []
  one = next(data.create(config, 8).train_batches(
      step - 1, on_skip=lambda b, n: skipped.append((b, n))))
  hosts = [next(data.create(config, 8, process_index=h, process_count=2).train_batches(step - 1))
           for h in (0, 1)]
  assert skipped == [(step - 1, 1)]
  rows = [_fingerprint(image) for image in one.image]
  damaged_row = list(clean.index).index(split_index)
  for row in range(8):   # every other row as stored; the damaged one another row's image
    if row != damaged_row:
      np.testing.assert_array_equal(one.image[row], clean.image[row])
  assert rows[damaged_row] != _fingerprint(clean.image[damaged_row])
  twin = [r for r in range(8) if r != damaged_row and rows[r] == rows[damaged_row]][0]
  assert one.label[damaged_row] == one.label[twin]
  assert one.index[damaged_row] == one.index[twin] == clean.index[twin]
  for key, value in one.arrays().items():   # two hosts make the same replacement
    np.testing.assert_array_equal(np.concatenate([h.arrays()[key] for h in hosts]), value)

  # Rows a device decodes carry the JPEG of the same replacement.
  on_devices = next(data.create(config, 8).train_batches(
      step - 1, split=DecodeSplit.of(per_device=4, host_share=0.0)))
  assert bytes(on_devices.jpeg_of(damaged_row)) == bytes(on_devices.jpeg_of(twin))
  with pytest.raises(errors.DamagedRecordError, match=f'record {split_index} of the split'):
    next(data.create(_config(store, 1), 8).train_batches(
        step - 1, split=DecodeSplit.of(per_device=4, host_share=0.0)))

  # The image that took its place damaged too: both rows take images of rows still readable.
  shard, record = divmod(int(clean.index[twin]), PER_SHARD)
  _invert_record(store, f'train-{shard:05d}-of-00006.array_record', record)
  twice = next(data.create(config, 8).train_batches(step - 1))
  readable = [r for r in range(8) if r not in (damaged_row, twin)]
  for row in readable:
    np.testing.assert_array_equal(twice.image[row], clean.image[row])
  for row in (damaged_row, twin):
    assert twice.index[row] in clean.index[readable]
    np.testing.assert_array_equal(
        twice.image[row], clean.image[list(clean.index).index(twice.index[row])])


def _training_stops_then_a_skip_resumes_exactly(pristine, tmp_path, caplog, workers):
  store = _copy(pristine, tmp_path)
  _invert_record(store, TRAIN_SHARD, TRAIN_RECORD)
  split_index = 2 * PER_SHARD + TRAIN_RECORD
  end = 12   # two epochs: the damaged record is read twice
  reading = _steps_reading(pristine, split_index, end)
  assert len(reading) == 2
  step = reading[0]
  settings = dict(data_workers=workers, data_threads=1 if workers else 2)
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.DamagedRecordError) as raised:
    train.train_and_evaluate(_config(store, end, **settings), workdir)
  message = str(raised.value)
  assert (f'The store {store} is damaged: record {TRAIN_RECORD} of its shard {TRAIN_SHARD} '
          f"(record {split_index} of the split 'train') cannot be read (") in message
  assert (f'Stopped at step {step - 1}, before step {step}, which reads it; checkpoint '
          f'{workdir}/checkpoints/{step - 1} saved.') in message
  assert 'python -m alexnet_jax.commands.prepare --source=image_folder:' in message
  assert '--config.skip_damaged_records=true' in message
  assert _steps_saved(workdir) == [step - 1]

  caplog.set_level(logging.INFO)
  skip = dict(settings, skip_damaged_records=True)
  train.train_and_evaluate(_config(store, end, **skip), workdir)
  assert f'Restored the checkpoint of step {step - 1}' in caplog.text
  # Logged as read, a batch or two ahead of the step: perhaps past the end too.
  replaced = [int(s) for s in re.findall(
      rf'record {TRAIN_RECORD} of its shard {TRAIN_SHARD} .*? Step (\d+) reads record \d+ of '
      'the split in its place', caplog.text)]
  assert [s for s in replaced if s <= end] == reading
  skips = summaries.read_scalars(workdir)['train/skipped_records']
  assert sum(count for _, count in skips) == 2
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(store, end, skip_damaged_records=True), straight)
  assert_same_tree(saved_state(workdir, end), saved_state(straight, end))


def test_a_damaged_training_record_stops_with_the_step_saved_and_a_skip_resumes_exactly(
    pristine, tmp_path, caplog):
  _training_stops_then_a_skip_resumes_exactly(pristine, tmp_path, caplog, workers=0)


@pytest.mark.slow
def test_the_same_with_decoding_processes(pristine, tmp_path, caplog):
  _training_stops_then_a_skip_resumes_exactly(pristine, tmp_path, caplog, workers=2)


@pytest.mark.slow   # 30 s: the README's quick command stays under 10 minutes
def test_a_damaged_validation_record_stops_the_evaluation_and_a_skip_leaves_it_out(
    pristine, tmp_path, caplog):
  store = _copy(pristine, tmp_path)
  _invert_record(store, VAL_SHARD, VAL_RECORD)
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.DamagedRecordError) as raised:
    train.train_and_evaluate(_config(store, 4, eval_every_steps=2), workdir)
  assert (f'record {VAL_RECORD} of its shard {VAL_SHARD} (record {7 + VAL_RECORD} of the '
          "split 'validation')") in str(raised.value)
  assert (f'Stopped at step 2, whose evaluation reads it; checkpoint {workdir}/checkpoints/2 '
          'saved.') in str(raised.value)
  assert _steps_saved(workdir) == [2]
  # The evaluation command stops on it too, and with the skip leaves it out.
  with pytest.raises(errors.DamagedRecordError, match=f'record {VAL_RECORD} of its shard'):
    evaluate_workdirs(_config(store, 4), [workdir], 'latest')
  skip = _config(store, 4, eval_every_steps=2, skip_damaged_records=True)
  alone = evaluate_workdirs(skip, [workdir], 'latest')[workdir]
  assert (alone['examples'], alone['skipped_records']) == (14, 1)

  caplog.set_level(logging.INFO)
  resumed = train.train_and_evaluate(skip, workdir)
  assert 'The run stopped during the evaluation of step 2: evaluating it first.' in caplog.text
  assert (resumed['examples'], resumed['skipped_records']) == (14, 1)
  evaluations = summaries.read_scalars(workdir)
  assert [step for step, _ in evaluations['eval/skipped_records']] == [2, 4]
  straight = str(tmp_path / 'straight')
  uninterrupted = train.train_and_evaluate(skip, straight)
  assert uninterrupted == resumed
  assert_same_tree(saved_state(workdir, 4), saved_state(straight, 4))


@pytest.mark.slow
def test_main_prints_the_message_alone_with_decoding_processes(pristine, tmp_path):
  store = _copy(pristine, tmp_path)
  _invert_record(store, TRAIN_SHARD, TRAIN_RECORD)
  step = _steps_reading(pristine, 2 * PER_SHARD + TRAIN_RECORD, 6)[0]
  workdir = tmp_path / 'run'
  env = process_env()
  flags = [f'--config.{k}={v}' for k, v in dict(
      dataset=store, width=0.125, image_size=64, resize_size=73, global_batch_size=8,
      num_train_steps=12, eval_every_steps=1000, data_workers=2, data_threads=1).items()]
  run = subprocess.run([sys.executable, 'main.py', '--config=configs/alexnet.py:demo',
                        f'--workdir={workdir}', *flags], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 1, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr and 'Traceback' not in run.stdout, run.stderr[-5000:]
  last = run.stderr.strip().split('\nerror: ')[-1]
  assert last.startswith(f'The store {store} is damaged: record {TRAIN_RECORD} of its shard '
                         f'{TRAIN_SHARD}'), run.stderr[-3000:]
  assert f'Stopped at step {step - 1}, before step {step}' in last
  assert last.rstrip().endswith('Then run the same command to resume.')
  assert _steps_saved(workdir) == [step - 1]
