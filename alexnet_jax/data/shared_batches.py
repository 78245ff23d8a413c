"""Host batches decoded straight into buffers that are made once and reused.

A batch array made fresh for every batch has its pages faulted in by the thread
that decodes into it, and, when grain hands a worker process's batch over in a
shared-memory segment made for it, faulted in again by the trainer that reads
it; shared memory gets no huge pages, so that is a fault every 4 KiB. On a
2-core VM those faults and an array per image held the loader to about half of
the decoder's rate per core (BENCHMARKS.md, "The data path").
Here the loader decodes into slots, one host batch each, of a pool made when
its iterator starts: a `Ring` of shared memory for each decoding process, whose
number grain carries back to the trainer that reads the slot where it lies, or
`LocalSlots` for the threads of the trainer's own process. After the first
round no page is new on either side.

Who owns a slot: the decoder, from taking its number off the pool's free list
until it hands the number on; then the trainer, until the last array viewing
the slot is gone, when the number goes back on the free list. A decoder with
no free slot waits. So that a consumer that keeps many batches cannot hold
every slot while it waits for the next batch, the trainer lends at most
`lendable` slots of a pool at once; past that a batch is copied out and its
slot freed at once.
"""

import abc
import dataclasses
import math
import os
import queue
import shutil
import tempfile
import threading
import weakref
from multiprocessing import shared_memory

import numpy as np

from alexnet_jax.errors import DataError

_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class Layout:
  """The arrays of one host batch: ((name, shape, dtype), ...), laid out one after another."""
  fields: tuple

  @property
  def offsets(self) -> tuple[int, ...]:
    offsets, end = [], 0
    for _, shape, dtype in self.fields:
      offsets.append(end)
      end += _aligned(math.prod(shape) * np.dtype(dtype).itemsize)
    return tuple(offsets)

  @property
  def nbytes(self) -> int:
    _, shape, dtype = self.fields[-1]
    return self.offsets[-1] + _aligned(math.prod(shape) * np.dtype(dtype).itemsize)

  def arrays(self, buffer) -> dict:
    """{name: array} viewing `buffer` (one slot's bytes)."""
    return {name: np.frombuffer(buffer, dtype, math.prod(shape), offset).reshape(shape)
            for (name, shape, dtype), offset in zip(self.fields, self.offsets)}


def _aligned(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN


class _Pool(abc.ABC):
  """The trainer's side of a pool of slots: lending them, taking them back."""

  def __init__(self, buffer, layout: Layout, lendable: int):
    self._buffer, self._layout, self._lendable = buffer, layout, lendable
    self._lock = threading.Lock()
    self._lent, self._closed = 0, False

  def _slot(self, slot: int) -> np.ndarray:
    return np.frombuffer(self._buffer, np.uint8, self._layout.nbytes, slot * self._layout.nbytes)

  def lend(self, slot: int) -> dict:
    """The batch in `slot`, as arrays that free the slot once they are all gone; a copy (and
    the slot freed now) if `lendable` slots are out already."""
    view = self._slot(slot)
    with self._lock:
      lend = self._lent < self._lendable
      self._lent += lend
    if not lend:
      batch = {k: v.copy() for k, v in self._layout.arrays(view).items()}
      del view
      self._free_slot(slot)
      return batch
    # Every array below views `view`, which lives as long as the last of them.
    weakref.finalize(view, self._returned, slot)
    return self._layout.arrays(view)

  def _returned(self, slot: int) -> None:
    with self._lock:
      self._lent -= 1
    self._free_slot(slot)

  def _free_slot(self, slot: int) -> None:
    with self._lock:
      if not self._closed:
        self._put_free(slot)

  @abc.abstractmethod
  def _put_free(self, slot: int) -> None:
    ...

  def close(self) -> None:
    """Ends the pool: a decoder waiting for a slot stops; lent arrays stay readable."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      self._end()

  @abc.abstractmethod
  def _end(self) -> None:
    ...


class LocalSlots(_Pool):
  """A pool for the decoding threads of the trainer's own process, in its memory."""

  def __init__(self, layout: Layout, slots: int, lendable: int):
    # A memoryview, as shared memory's is: the arrays of a slot then keep the slot's own view
    # alive (numpy would take an array's base past it, to an array that owns its memory).
    super().__init__(memoryview(np.empty(slots * layout.nbytes, np.uint8)), layout, lendable)
    self._free = queue.SimpleQueue()
    for slot in range(slots):
      self._free.put(slot)

  def claim(self) -> tuple[int, dict]:
    """(slot, its arrays): waits until the trainer frees a slot."""
    slot = self._free.get()
    if slot < 0:
      self._free.put(slot)   # for the next waiting thread
      raise RuntimeError('The loader was closed.')
    return slot, self._layout.arrays(self._slot(slot))

  def _put_free(self, slot: int) -> None:
    self._free.put(slot)

  def _end(self) -> None:
    self._free.put(-1)


@dataclasses.dataclass(frozen=True)
class RingHandle:
  """What a worker process needs to attach to its ring (picklable)."""
  index: int
  memory: str      # the shared-memory segment's name
  free_list: str   # the FIFO of free slot numbers
  layout: Layout
  slots: int


class Ring(_Pool):
  """The trainer's side of one decoding process's slots, in shared memory."""

  def __init__(self, index: int, layout: Layout, slots: int, lendable: int):
    if not 0 < slots < 256:
      raise ValueError(f'{slots} slots: a ring holds 1 to 255.')
    self._memory = _create_memory(slots * layout.nbytes)
    super().__init__(self._memory.buf, layout, lendable)
    self._folder = tempfile.mkdtemp(prefix='alexnet_jax_ring_')
    free_list = os.path.join(self._folder, 'free_slots')
    os.mkfifo(free_list)
    # Read and write: opening never waits for a reader, and a worker's read waits for data
    # rather than seeing the end of the file while the trainer lives.
    self._free = os.open(free_list, os.O_RDWR)
    os.write(self._free, bytes(range(slots)))
    self.handle = RingHandle(index, self._memory.name, free_list, layout, slots)

  def _put_free(self, slot: int) -> None:
    os.write(self._free, bytes([slot]))

  def _end(self) -> None:
    """The free list closed (a worker waiting on it reads its end), the segment's name freed;
    the mapping goes with the last array viewing it."""
    os.close(self._free)
    shutil.rmtree(self._folder, ignore_errors=True)
    self._memory.unlink()
    self._memory.close()


class _Memory(shared_memory.SharedMemory):
  """A segment whose mapping, while arrays still view it, goes with the last of them."""

  def close(self):
    try:
      super().close()
    except BufferError:
      pass


def _create_memory(nbytes: int) -> _Memory:
  """A segment of `nbytes` whose pages are all reserved now: a full /dev/shm is an error here,
  not a SIGBUS in a worker later."""
  memory = _Memory(create=True, size=nbytes)
  path = os.path.join('/dev/shm', memory.name.lstrip('/'))
  if os.path.exists(path):   # Linux: shared memory is a file there
    fd = os.open(path, os.O_RDWR)
    try:
      os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
      memory.close()
      memory.unlink()
      free = shutil.disk_usage('/dev/shm').free
      raise DataError(
          f'The decoding processes need {nbytes / 2**30:.2f} GiB more of shared memory '
          f'(/dev/shm), and {free / 2**30:.2f} GiB are free ({e.strerror}). In a container, '
          'give it more (docker run --shm-size=8g, or --ipc=host); or decode in the trainer\'s '
          'process with --config.data_workers=0, or use fewer threads per process '
          '(--config.data_threads) or a smaller global batch.') from e
    finally:
      os.close(fd)
  return memory


class WorkerRing:
  """A worker's side of its ring: free slots to decode into."""

  def __init__(self, handle: RingHandle):
    self.index = handle.index
    self._layout = handle.layout
    self._memory = _Memory(handle.memory)
    self._free = os.open(handle.free_list, os.O_RDONLY)

  def claim(self) -> tuple[int, dict]:
    """(slot, its arrays): waits until the trainer frees a slot."""
    number = os.read(self._free, 1)
    if not number:
      raise RuntimeError('The trainer closed the ring of shared batches.')
    slot = number[0]
    view = np.frombuffer(self._memory.buf, np.uint8, self._layout.nbytes,
                         slot * self._layout.nbytes)
    return slot, self._layout.arrays(view)


_worker_ring: WorkerRing | None = None


def attach(handle: RingHandle) -> None:
  """Makes `handle`'s ring this process's output: called once in each decoding process."""
  global _worker_ring
  _worker_ring = WorkerRing(handle)


def worker_ring() -> WorkerRing | None:
  """This decoding process's ring; None in the trainer's process."""
  return _worker_ring
