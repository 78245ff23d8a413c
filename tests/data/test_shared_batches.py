"""Decoding processes write into rings of shared slots: the trainer sees the batches threads
make, slots are reused without a batch being overwritten while it is held, and nothing is
left in /dev/shm."""

import copy
import errno
import faulthandler
import os
import threading

import jax
import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.data import image_source, loader, shared_batches, synthetic, to_devices
from alexnet_jax.parallel import placement


def _data(workers: int, threads: int, batch: int = 8, examples: int = 40):
  generated = synthetic.SyntheticSplit(synthetic.TRAIN, examples, 24, 5)
  split = image_source.Split(generated, 0, examples)
  return loader.make_data(split, split, name='synthetic', num_classes=5, image_size=24,
                          global_batch=batch, seed=3,
                          reading=loader.Reading(workers=workers, threads=threads))


def _segments() -> set[str]:
  """Shared-memory segments (multiprocessing's semaphores live beside them: not those)."""
  if not os.path.isdir('/dev/shm'):
    return set()
  return {name for name in os.listdir('/dev/shm') if not name.startswith('sem.')}


@pytest.mark.parametrize('workers, threads', [(0, 2), (2, 1)])
def test_kept_batches_stay_whole_while_the_decoders_reuse_their_slots(workers, threads):
  """A consumer that keeps three times as many batches as a pool has slots: the first ones are
  lent, the rest copied, none waits for another, and every one equals the batch a consumer
  that copies each at once and keeps none gets."""
  before = _segments()
  slots = threads + 1 + loader._LENDABLE
  count = 3 * max(1, workers) * slots
  faulthandler.dump_traceback_later(120, exit=True)   # a wait that never ends fails loudly
  try:
    copied = _data(0, 1).train_batches(5)
    expected = [copy.deepcopy(next(copied)) for _ in range(count)]
    copied.close()
    stream = _data(workers, threads).train_batches(5)
    kept = [next(stream) for _ in range(count)]
    stream.close()
  finally:
    faulthandler.cancel_dump_traceback_later()
  for got, want in zip(kept, expected, strict=True):
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.label, want.label)
  assert len({b.image.tobytes() for b in kept}) == count   # no two batches alike
  del kept
  assert _segments() == before   # the rings' segments are unlinked


def test_a_padded_eval_pass_from_processes_equals_one_from_threads():
  data_threads, data_processes = _data(0, 1, examples=21), _data(2, 1, examples=21)
  want, got = list(data_threads.eval_batches()), list(data_processes.eval_batches())
  assert len(got) == len(want) == 3
  for g, w in zip(got, want):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(getattr(g, key), getattr(w, key))
  assert sum(b.mask.sum() for b in got) == 21


def test_a_slot_returns_to_its_worker_when_the_last_array_viewing_it_is_gone():
  layout = shared_batches.Layout((('image', (2, 4, 4, 3), np.uint8),
                                  ('label', (2,), np.int32)))
  ring = shared_batches.Ring(0, layout, slots=2, lendable=1)
  try:
    worker = shared_batches.WorkerRing(ring.handle)
    slot, arrays = worker.claim()
    arrays['image'][:] = 7
    lent = ring.lend(slot)
    image = lent['image'][1]              # a view of a view keeps the slot out
    del lent, arrays
    other, arrays = worker.claim()
    assert other != slot                  # the only free slot left
    arrays['image'][:] = 9
    copied = ring.lend(other)             # past `lendable`: a copy, and the slot freed at once
    again, arrays = worker.claim()
    assert again == other
    arrays['image'][:] = 5
    assert (copied['image'] == 9).all() and (image == 7).all()
    del image                             # the last view of `slot`: it is free again
    assert worker.claim()[0] == slot
  finally:
    ring.close()


def test_a_full_dev_shm_is_refused_with_what_to_do(monkeypatch):
  if not os.path.isdir('/dev/shm'):
    pytest.skip('no /dev/shm on this system')

  def full(fd, offset, length):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(shared_batches.os, 'posix_fallocate', full)
  before = _segments()
  layout = shared_batches.Layout((('image', (8, 16, 16, 3), np.uint8),))
  with pytest.raises(errors.DataError, match=r'--shm-size.*--config.data_workers=0'):
    shared_batches.Ring(0, layout, slots=4, lendable=2)
  assert _segments() == before


def test_batches_reach_the_devices_on_another_thread_two_steps_ahead():
  mesh = placement.make_mesh()
  put = to_devices.ToDevices(mesh)
  threads, calls = set(), []

  def recording_put(batch):
    threads.add(threading.get_ident())
    calls.append(int(batch.label[0]))
    return put(batch)

  stream = _data(0, 1).train_batches(0, put=recording_put)
  try:
    first = next(stream)
    assert isinstance(first['image'], jax.Array)
    assert first['image'].sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch')), 4)
    for _ in range(100):   # the background thread fills its queue while nothing is taken
      if len(calls) >= 1 + loader.DEVICE_PREFETCH:
        break
      threading.Event().wait(0.05)
    assert len(calls) >= 1 + loader.DEVICE_PREFETCH
  finally:
    stream.close()
  assert threads and threading.get_ident() not in threads


def test_batches_staged_in_pinned_host_memory_arrive_unchanged():
  mesh = placement.make_mesh()
  host = next(_data(0, 1).train_batches(0))
  direct = to_devices.ToDevices(mesh, staging='none')(host)
  pinned = to_devices.ToDevices(mesh, staging='pinned')(host)
  for key, value in host.arrays().items():
    np.testing.assert_array_equal(np.asarray(pinned[key]), value)
    assert pinned[key].sharding == direct[key].sharding   # on the devices, as the step takes it
