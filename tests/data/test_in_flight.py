"""K batches put on the devices at once (`in_flight.py`), against the host alone, the GPU
alone and one batch at a time: a stand-in source and GPU decoder whose decodes wait without
holding Python's lock, so that the rates are the waits', and the figures are ratios measured
in the same test."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from alexnet_jax.benchmarking import stand_in
from alexnet_jax.data import decode_share, image_source, in_flight, loader, to_devices
from alexnet_jax.parallel import placement

SIZE, BATCH, IMAGES = 64, 32, 64 * 40   # small JPEGs, within the room a row has for bytes
# Per image: the host's wait and the stand-in GPU's, long beside the CPU work of a batch. With
# 2 loader threads and 2 lanes the two rates are equal, and a batch split half and half takes
# 64 ms of waiting on either side.
HOST_S = GPU_S = 0.004
K = 2
WARMUP, TIMED, ROUNDS = 2, 10, 2


class _Repeated(stand_in.SleepingSource):
  """The 64 JPEGs over and over: IMAGES images."""

  def __len__(self):
    return IMAGES

  def read_into(self, index, out):
    return super().read_into(index % 64, out)

  def jpeg(self, index):
    return super().jpeg(index % 64)


def _data():
  source = _Repeated(stand_in.jpegs(64, SIZE), SIZE, HOST_S)
  split = image_source.Split(source, 0, IMAGES)
  return loader.make_data(split, split, name='stand-in', num_classes=4, image_size=SIZE,
                          global_batch=BATCH, seed=0,
                          reading=loader.Reading(workers=0, threads=2))


def _put(lanes, host_rows=None, concurrency=None, fail_at=None):
  decoders = [stand_in.SleepingDecoder(GPU_S, concurrency, fail_at) for _ in range(lanes)]
  put = to_devices.ToDevices(placement.make_mesh(), decoders=decoders, host_batch=BATCH,
                             host_share='auto')
  if host_rows is not None:
    put.set_split(host_rows)
  return put


def _timed(stream, keep=None) -> float:
  """Images/s of `stream` over TIMED batches after WARMUP; the batches kept in `keep`."""
  try:
    for _ in range(WARMUP):
      batch = next(stream)
    begin = time.perf_counter()
    for _ in range(TIMED):
      batch = next(stream)
      if keep is not None:
        keep.append(batch)
    return BATCH * TIMED / (time.perf_counter() - begin)
  finally:
    stream.close()


def test_k_batches_at_once_feed_at_the_host_and_the_gpu_added_up():
  data = _data()
  host_rows = BATCH // 4   # half of each device's rows: the two sides wait alike
  rates = {'host': [], 'gpu': [], 'overlapped': [], 'synchronous': []}
  for _ in range(ROUNDS):   # in turns, the best of each: a busy spell slows one round only
    rates['host'].append(_timed(data.train_batches(0)))
    all_gpu = _put(K, host_rows=0)
    rates['gpu'].append(_timed(data.train_batches(0, put=all_gpu, split=all_gpu.decode_split)))
    concurrency = stand_in.Concurrency()
    overlapped_put = _put(K, host_rows, concurrency)
    overlapped_batches, synchronous_batches = [], []
    rates['overlapped'].append(_timed(
        data.train_batches(0, put=overlapped_put, split=overlapped_put.decode_split),
        overlapped_batches))
    synchronous_put = _put(1, host_rows)
    rates['synchronous'].append(_timed(
        data.train_batches(0, put=synchronous_put, split=synchronous_put.decode_split),
        synchronous_batches))
  host, gpu, overlapped, synchronous = (max(r) for r in rates.values())
  figures = dict(host=host, gpu=gpu, overlapped=overlapped, synchronous=synchronous)
  assert decode_share.split_rows(BATCH // 2, host, gpu) == host_rows, figures
  assert overlapped >= 0.85 * (host + gpu), figures
  assert overlapped >= 1.3 * max(host, gpu), figures
  # One batch at a time: at best a batch per wait of the GPU for its rows.
  gpu_rows = BATCH - 2 * host_rows
  assert synchronous <= 1.1 * BATCH / (gpu_rows * GPU_S), figures
  assert concurrency.most == K
  assert len(overlapped_batches) == len(synchronous_batches) == TIMED
  for got, want in zip(overlapped_batches, synchronous_batches):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def _lane_threads():
  return [t for t in threading.enumerate() if t.name.startswith('to_devices_')]


def test_an_error_in_batch_n_is_raised_at_batch_n_and_close_joins_every_thread():
  data = _data()
  host_only = data.train_batches(0)
  try:
    batches = [next(host_only) for _ in range(4)]
    fail_at = int(batches[3].index[BATCH // 2 - 1])   # the last row of device 0: the GPU's
    wanted = [b.image.copy() for b in batches[:3]]
  finally:
    host_only.close()
  put = _put(3, host_rows=8, fail_at=fail_at)
  stream = data.train_batches(0, put=put, split=put.decode_split)
  try:
    for want in wanted:
      np.testing.assert_array_equal(np.asarray(next(stream)['image']), want)
    with pytest.raises(RuntimeError, match=f'fail on image {fail_at}'):
      next(stream)
  finally:
    stream.close()
  assert not _lane_threads()


def test_closing_a_stream_in_full_flow_joins_every_thread():
  data = _data()
  put = _put(4, host_rows=8)
  stream = data.train_batches(0, put=put, split=put.decode_split)
  next(stream)
  assert len(_lane_threads()) == 4
  stream.close()
  assert not _lane_threads()


class _Held:
  """A host batch that counts how many of its kind are alive."""
  alive = most = 0
  lock = threading.Lock()

  def __init__(self, number):
    self.number = number
    with _Held.lock:
      _Held.alive += 1
      _Held.most = max(_Held.most, _Held.alive)

  def __del__(self):
    with _Held.lock:
      _Held.alive -= 1


def test_results_come_in_order_and_at_most_k_host_batches_are_held():
  rng = np.random.default_rng(0)
  waits = rng.uniform(0, 0.01, 60)

  def put(lane, host):
    time.sleep(waits[host.number])   # later batches often finish first
    return (lane, host.number)

  _Held.alive = _Held.most = 0
  stream = in_flight.InFlight((_Held(n) for n in range(60)), ['a', 'b', 'c'], put)
  try:
    got = list(stream)
  finally:
    stream.close()
  assert [number for _, number in got] == list(range(60))
  assert {lane for lane, _ in got} == {'a', 'b', 'c'}
  assert _Held.most <= 3


class _Stop(Exception):
  pass


def test_a_stop_signalled_while_the_training_thread_waits_interrupts_it_and_close_joins():
  """As a preemption does (`loop/stopping.py`): a signal handler raises in the waiting
  training thread."""

  def put(lane, host):
    time.sleep(0.5)
    return host.number

  def stop(signum, frame):
    raise _Stop

  previous = signal.signal(signal.SIGUSR1, stop)
  stream = in_flight.InFlight((_Held(n) for n in range(10)), ['a', 'b'], put)
  try:
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    begin = time.perf_counter()
    with pytest.raises(_Stop):
      next(stream)
    assert time.perf_counter() - begin < 0.4   # not after the batch
  finally:
    stream.close()
    signal.signal(signal.SIGUSR1, previous)
  assert not _lane_threads()
