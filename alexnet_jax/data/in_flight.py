"""Several host batches on their way to the devices at once, taken back in order.

nvImageCodec keeps one hardware batch in flight per decoder: each call waits for that
decoder's previous one. So that the GPU decodes several batches at once, each of K threads
owns a lane (`to_devices.ToDevices` gives each its own decoders, one per local device, and
its own streams) and puts whole batches on the devices, one after another: each thread takes
the next host batch off the loader, in turn, and the training thread takes the device
batches back in the loader's order.

Bounds: a thread takes a batch only while fewer than K + 1 are taken and not yet handed to
the training thread: of those, at most K are host batches (the loader's lent slots, one per
lane, let go once on the devices), the rest device batches waiting for the training thread. An error, the loader's or a thread's, is raised when the
training thread reaches its batch. `close()` (the loader's stream closing it, at the end of
the run, a stop or an error) stops every thread and joins it.
"""

import threading
from typing import Callable, Iterator, Sequence


class InFlight:
  """next() -> put(lane, host batch) of the loader's batches, in order, K at once."""

  def __init__(self, host_batches: Iterator, lanes: Sequence, put: Callable):
    self._source, self._put = host_batches, put
    self._window = len(lanes) + 1
    self._lock = threading.Condition()
    self._source_lock = threading.Lock()   # apart: the training thread never waits on the loader
    self._reserved = 0   # batches a thread has set out to take
    self._pulled = 0     # batches taken off the loader: the next one's number
    self._handed = 0     # batches handed to the training thread
    self._done = {}      # batch number -> device batch
    self._end = None     # (number, error or None): the loader's end, or the first error
    self._stopped = False
    self._threads = [threading.Thread(target=self._work, args=(lane,), daemon=True,
                                      name=f'to_devices_{i}') for i, lane in enumerate(lanes)]
    for thread in self._threads:
      thread.start()

  def __iter__(self):
    return self

  def __next__(self):
    with self._lock:
      self._lock.wait_for(lambda: self._handed in self._done or self._stopped or
                          (self._end is not None and self._handed >= self._end[0]))
      if self._handed not in self._done:
        error = None if self._stopped else self._end[1]
        self._end = (self._handed, None) if self._end else None   # raised once
        if error is not None:
          raise error
        raise StopIteration
      batch = self._done.pop(self._handed)
      self._handed += 1
      self._lock.notify_all()
    return batch

  def _work(self, lane) -> None:
    while True:
      with self._lock:
        self._lock.wait_for(lambda: self._over() or
                            self._reserved < self._handed + self._window)
        if self._over():
          return
        self._reserved += 1
      with self._source_lock:   # numbers follow the loader's order
        if self._over():
          return
        number, self._pulled = self._pulled, self._pulled + 1
        try:
          host = next(self._source, None)
        except Exception as e:   # the loader's error: raised at its own batch
          return self._finish(number, None, e)
      if host is None:
        return self._finish(number, None, None)
      try:
        result = self._put(lane, host)
      except Exception as e:   # raised at its own batch, on the training thread
        return self._finish(number, None, e)
      del host   # the loader's slot goes back as soon as the batch is on the devices
      self._finish(number, result, None)

  def _over(self) -> bool:
    return self._stopped or self._end is not None

  def _finish(self, number: int, result, error) -> None:
    """Batch `number` on the devices (`result`), or the end of the batches there (`result`
    None: the loader's end, or `error`); nothing is taken after an end."""
    with self._lock:
      if result is not None:
        self._done[number] = result
      elif self._end is None or number < self._end[0]:
        self._end = (number, error)
      self._lock.notify_all()

  def close(self) -> None:
    """Stops every thread and joins it (a thread in the loader's `next` returns once the
    loader's pools are closed, which the loader does first); the loader's iterator is then
    closed."""
    with self._lock:
      self._stopped = True
      self._lock.notify_all()
    for thread in self._threads:
      thread.join()
    close = getattr(self._source, 'close', None)
    if close is not None:
      close()
