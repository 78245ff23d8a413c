"""Per-host train and eval batches of stored-size uint8 images, read with grain.

Training reads the split in a global shuffle that is a pure function of (seed,
epoch), every epoch the first `steps_per_epoch * global_batch` images of it.
Global batch s is positions [s * global_batch, (s + 1) * global_batch) of that
stream, and host h reads only its block of each, rows [h * host_batch,
(h + 1) * host_batch): the global batch, and so the training, does not depend
on how many hosts read it. A batch is a function of its step alone, so a run
resumed at step s starts reading at step s, reading no record before it.

Evaluation reads the whole split once, in order, padded with mask-0 examples to
a whole number of global batches: every image counts once, and every host runs
the same number of eval steps.

grain's elements are whole host batches: each of `threads` threads (JPEG
decoding releases Python's lock) works out a batch's examples and decodes them
straight into a slot of a pool of batch buffers made once (`batch_reader.py`,
`shared_batches.py`), with no array per image, no stacking and no fresh page;
the shuffle is one permutation per epoch, not a computation per image. With `workers` decoding
processes (grain's `mp_prefetch`), each process's pool is shared memory that
the trainer reads where it lies, so a process costs what a thread costs.

Where the devices decode JPEGs (`host_batch.DecodeSplit`), the rows they decode
carry the stored JPEG's bytes instead of pixels: the host only reads them.

Batches are `host_batch.HostBatch`es. Given `put` (host batch -> device batch,
`to_devices.py`), a background thread calls it on each batch two steps ahead,
so the training thread only dispatches steps; a `put` with K lanes puts K
batches at once (`put.stream`, `in_flight.py`).
"""

import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import threading
import time
from typing import Callable, Iterator

import grain
from absl import flags

from alexnet_jax.data import shared_batches
from alexnet_jax.data.batch_reader import BatchReader
from alexnet_jax.data.host_batch import HostBatch
from alexnet_jax.data.image_source import Split
from alexnet_jax.errors import DataError

# Batches on the devices ahead of the step (with `put`).
DEVICE_PREFETCH = 2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Slots a pool lends at once: the batch being copied to the devices, and a few the consumer
# keeps meanwhile; a consumer that keeps more gets copies.
_LENDABLE = 4


@dataclasses.dataclass(frozen=True)
class Data:
  num_classes: int
  image_size: int           # the side of the square images the host sends to the devices
  train_examples: int       # one epoch, all hosts together
  eval_examples: int        # the whole validation split, all hosts together
  steps_per_epoch: int
  eval_steps: int           # batches per evaluation pass, the same on every host
  # train_batches(start_step, put=None, split=None, on_skip=None): this host's batches
  # (HostBatch) of steps start_step + 1, start_step + 2, ... A function of the seed and the
  # step alone: a resumed run reads what the interrupted one would have read. With `put`,
  # put(batch) of each, made ahead on a background thread. With `split` (a DecodeSplit), the
  # rows it gives the devices carry their JPEG bytes instead of pixels. A damaged record
  # raises DamagedRecordError, or with skip_damaged is skipped, logged, and counted by
  # on_skip(batch number, count): batch b is step b + 1's.
  train_batches: Callable[..., Iterator]
  # eval_batches(put=None, split=None, on_skip=None): one pass over this host's share of the
  # validation split.
  eval_batches: Callable[..., Iterator]
  class_names: tuple[str, ...] = ()
  jpeg_store: bool = False  # both splits' images are stored JPEGs a device can decode


@dataclasses.dataclass(frozen=True)
class Reading:
  """How this host reads: its place among the hosts and its decoding resources."""
  process_index: int = 0
  process_count: int = 1
  workers: int = 0      # decoding processes; 0: in the trainer's process
  threads: int = 4      # decoding threads in each process, each making whole batches


def cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def auto_resources(workers: int = -1, threads: int = -1) -> tuple[int, int]:
  """(workers, threads); -1 picks: a decoding process per 8 cores (none below 8 cores), and
  threads for every core but one, which the training thread and the copies to the devices
  keep."""
  if workers < 0:
    workers = cores() // 8
  if threads < 0:
    threads = max(1, (cores() - 1) // max(1, workers))
  return workers, threads


def make_data(train: Split, evaluation: Split, *, name: str, num_classes: int, image_size: int,
              global_batch: int, seed: int, reading: Reading, class_names=(),
              skip_damaged: bool = False) -> Data:
  if global_batch % reading.process_count:
    raise DataError(f'The global batch of {global_batch} does not split between '
                    f'{reading.process_count} hosts.')
  if num_classes < 2:
    raise DataError(f'{name} has {num_classes} class{"" if num_classes == 1 else "es"} '
                    f'({", ".join(class_names) or "none"}): a classifier needs two or more.')
  host_batch = global_batch // reading.process_count
  steps_per_epoch = train.examples // global_batch
  if steps_per_epoch == 0:
    raise DataError(
        f'{name} has {train.examples} training examples, fewer than one global batch of '
        f'{global_batch}: lower --config.global_batch_size.')
  if evaluation.examples == 0:
    raise DataError(f'The validation split of {name} has no examples.')
  eval_steps = math.ceil(evaluation.examples / global_batch)
  common = dict(image_size=image_size, global_batch=global_batch, host_batch=host_batch,
                host_index=reading.process_index, steps_per_epoch=steps_per_epoch,
                skip_damaged=skip_damaged)

  def train_batches(start_step: int, put=None, split=None, on_skip=None) -> Iterator[HostBatch]:
    batches = BatchReader(train, seed=seed, decode_split=split, **common)
    return _iterate(batches, grain.MapDataset.range(start_step, 2**62), reading, put, on_skip)

  def eval_batches(put=None, split=None, on_skip=None) -> Iterator[HostBatch]:
    batches = BatchReader(evaluation, decode_split=split, **common)
    return _iterate(batches, grain.MapDataset.range(eval_steps), reading, put, on_skip)

  return Data(num_classes=num_classes, image_size=image_size, train_examples=train.examples,
              eval_examples=evaluation.examples, steps_per_epoch=steps_per_epoch,
              eval_steps=eval_steps, train_batches=train_batches, eval_batches=eval_batches,
              class_names=tuple(class_names),
              jpeg_store=train.source.stores_jpegs and evaluation.source.stores_jpegs)


def _iterate(batches: BatchReader, numbers: grain.MapDataset, reading: Reading,
             put, on_skip=None) -> Iterator:
  dataset = numbers.map(batches).to_iter_dataset(
      grain.ReadOptions(num_threads=reading.threads, prefetch_buffer_size=reading.threads))
  # Never waiting on each other: while the trainer waits for batch b, its decoders hold b's
  # slot and at most `threads` newer ones (grain's prefetch keeps threads + 1 batches under
  # way), and the trainer at most `_LENDABLE` older ones.
  # Each batch put at once past the first holds one more slot (`in_flight.py`).
  lendable = _LENDABLE + getattr(put, 'in_flight', 1) - 1
  slots = dict(layout=batches.layout, slots=reading.threads + 1 + lendable, lendable=lendable)
  if reading.workers == 0:
    pools = [shared_batches.LocalSlots(**slots)]
    batches.local = pools[0]
  else:
    pools = [shared_batches.Ring(i, **slots) for i in range(reading.workers)]
    # grain's worker processes read its absl flags: outside an absl app (argparse
    # commands, tests) they keep their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=reading.workers),
        worker_init_fn=functools.partial(_start_worker, os.getpid(), [r.handle for r in pools]))
  dataset = dataset.map(functools.partial(_lend, pools, on_skip))

  def start():
    if put is None:
      return iter(dataset)
    if getattr(put, 'in_flight', 1) > 1:
      return put.stream(iter(dataset))
    return iter(grain.experimental.ThreadPrefetchIterDataset(
        dataset.map(put), prefetch_buffer_size=DEVICE_PREFETCH))

  return _closing(start, pools, hold_signals=reading.workers > 0)


def _lend(pools, on_skip, handle: dict) -> HostBatch:
  """The batch `handle` names; the damaged records it skipped logged here, in the trainer's
  process, and counted by on_skip(batch number, count)."""
  if 'skipped' in handle:
    b, skipped = handle['skipped']
    for line in skipped:
      logging.warning('Skipped (--config.skip_damaged_records): %s', line)
    if on_skip is not None:
      on_skip(b, len(skipped))
  return HostBatch.from_arrays(pools[handle['ring']].lend(handle['slot']))


def _closing(start, pools, hold_signals: bool) -> Iterator:
  """The batches of the iterator start() makes, once the first is asked for; closing it
  closes the pools, then the iterator."""
  iterator = None
  try:
    # The first batch starts grain's threads (and those of `put.stream`), and they the
    # decoding processes: started with SIGINT and SIGTERM held, those inherit them held, and
    # the trainer alone answers a Ctrl-C or a preemption (its handler runs once the first
    # batch is here).
    with _signals_held(hold_signals):
      iterator = start()
      first = next(iterator, None)
    if first is None:
      return
    yield first
    for batch in iterator:   # not `yield from`, which would close `iterator` before the pools
      yield batch
  finally:
    # A decoder waiting for a free slot wakes to the end of its pool, and stops.
    for pool in pools:
      pool.close()
    if iterator is not None:
      iterator.close()   # ends the worker processes now rather than at garbage collection


@contextlib.contextmanager
def _signals_held(hold: bool):
  """SIGINT and SIGTERM held back from this thread, and from the threads and processes it
  starts meanwhile, which keep them held."""
  if not hold or not hasattr(signal, 'pthread_sigmask'):
    yield
    return
  held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _start_worker(parent_pid: int, rings, worker_index: int, worker_count: int) -> None:
  """In each decoding process: its ring of shared batches, no answer to a Ctrl-C or a
  SIGTERM (the trainer stops it), and an end with the trainer."""
  del worker_count
  for stop in _STOP_SIGNALS:
    signal.signal(stop, signal.SIG_IGN)
  shared_batches.attach(rings[worker_index])
  _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
  """Ends this worker process when the trainer that started it is gone, even killed with
  SIGKILL (then nothing tells the workers to stop)."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name='exit_with_parent').start()
