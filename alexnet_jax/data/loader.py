"""Per-host train and eval batches of stored-size uint8 images, read with grain.

Training reads the split in a global shuffle that is a pure function of (seed,
epoch), every epoch the first `steps_per_epoch * global_batch` images of it.
Global batch s is positions [s * global_batch, (s + 1) * global_batch) of that
stream, and host h reads only its block of each, rows [h * host_batch,
(h + 1) * host_batch): the global batch, and so the training, does not depend
on how many hosts read it. Elements are read by index, so a run resumed at
step s starts reading at step s, reading no record before it.

Evaluation reads the whole split once, in order, padded with mask-0 examples to
a whole number of global batches: every image counts once, and every host runs
the same number of eval steps.

Decoding runs on `threads` threads (JPEG decoding releases Python's lock), in the
trainer's process or in each of `workers` processes (grain's `mp_prefetch`), each
thread making whole host batches. Threads cost least per image: a process must
copy its batches to the trainer through shared memory (on 2 cores, 3,900 images/s
per core on threads against 2,500 in one process; BENCHMARKS.md). Processes pay
on hosts with many cores, where one process's Python bookkeeping would become
the limit.
"""

import dataclasses
import functools
import math
import os
import threading
import time
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags

from alexnet_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
  """A random-access source of {'image': uint8 [S, S, 3], 'label'} and the slice [start, stop)
  of it that is the split."""
  source: grain.sources.RandomAccessDataSource
  start: int
  stop: int

  @property
  def examples(self) -> int:
    return self.stop - self.start

  def dataset(self) -> grain.MapDataset:
    return _sliced(grain.MapDataset.source(self.source), self.start, self.stop)


@dataclasses.dataclass(frozen=True)
class Data:
  num_classes: int
  image_size: int           # the side of the square images the host sends to the devices
  train_examples: int       # one epoch, all hosts together
  eval_examples: int        # the whole validation split, all hosts together
  steps_per_epoch: int
  eval_steps: int           # batches per evaluation pass, the same on every host
  # train_batches(start_step): this host's batches of steps start_step + 1, start_step + 2, ...
  # A function of the seed and the step alone: a resumed run reads what the interrupted
  # one would have read.
  train_batches: Callable[[int], Iterator[dict]]
  # eval_batches(): one pass over this host's share of the validation split.
  eval_batches: Callable[[], Iterator[dict]]
  class_names: tuple[str, ...] = ()


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
  threads to use every core."""
  if workers < 0:
    workers = cores() // 8
  if threads < 0:
    threads = max(1, cores() // max(1, workers))
  return workers, threads


class _Padded:
  """Eval element i: example i of the split (mask 1), or padding (mask 0) past its end."""

  def __init__(self, split: grain.MapDataset, size: int):
    self._split, self._size = split, size

  def __call__(self, index):
    if index < len(self._split):
      return {**self._split[index], 'mask': np.float32(1)}
    return {'image': np.zeros((self._size, self._size, 3), np.uint8), 'label': np.int32(0),
            'mask': np.float32(0)}


def make_data(train: Split, evaluation: Split, *, name: str, num_classes: int, image_size: int,
              global_batch: int, seed: int, reading: Reading,
              class_names=()) -> Data:
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

  def iterate(batches: grain.MapDataset) -> Iterator[dict]:
    batches = batches.to_iter_dataset(grain.ReadOptions(num_threads=reading.threads,
                                                        prefetch_buffer_size=reading.threads))
    if reading.workers > 0:
      # grain's worker processes read its absl flags: outside an absl app (argparse
      # commands, tests) they keep their defaults.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=reading.workers),
                                    worker_init_fn=functools.partial(_exit_with_parent,
                                                                     os.getpid()))
    iterator = iter(batches)
    try:
      yield from iterator
    finally:
      if hasattr(iterator, 'close'):
        iterator.close()   # ends the worker processes now rather than at garbage collection

  def train_batches(start_step: int) -> Iterator[dict]:
    epoch = train.dataset().shuffle(seed=_shuffle_seed(seed))   # reshuffled each epoch
    epochs = _sliced(epoch, 0, steps_per_epoch * global_batch).repeat()
    host_batches = _hosts_rows(epochs.batch(host_batch), reading)
    return iterate(_sliced(host_batches, start_step, None))

  def eval_batches() -> Iterator[dict]:
    padded = grain.MapDataset.range(eval_steps * global_batch).map(
        _Padded(evaluation.dataset(), image_size))
    return iterate(_hosts_rows(padded.batch(host_batch), reading))

  return Data(num_classes=num_classes, image_size=image_size, train_examples=train.examples,
              eval_examples=evaluation.examples, steps_per_epoch=steps_per_epoch,
              eval_steps=eval_steps, train_batches=train_batches, eval_batches=eval_batches,
              class_names=tuple(class_names))


def _sliced(ds: grain.MapDataset, start: int, stop: int | None) -> grain.MapDataset:
  """ds[start:stop]; ds itself when that is all of it (each slice costs a little per image)."""
  if start == 0 and (stop is None or stop == len(ds)):
    return ds
  return ds.slice(slice(start, stop))


def _hosts_rows(host_batches: grain.MapDataset, reading: Reading) -> grain.MapDataset:
  """This host's block of each global batch: every process_count-th host batch."""
  if reading.process_count == 1:
    return host_batches
  return host_batches.slice(slice(reading.process_index, None, reading.process_count))


def _exit_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """Ends this worker process when the trainer that started it is gone, even killed with
  SIGKILL (then nothing tells the workers to stop)."""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name='exit_with_parent').start()


def _shuffle_seed(seed: int) -> int:
  """grain's shuffle takes a seed in [0, 2**32)."""
  return int(np.random.SeedSequence([seed, 0x5eed]).generate_state(1)[0])
