"""Host batch b of the training stream or of the evaluation pass: which examples it holds, read
into one slot of a pool of batch buffers (`shared_batches.py`), as `loader.py` has grain call
it on its threads and decoding processes (the order and the rows are described there).
"""

import threading

import numpy as np

from alexnet_jax.data import image_source, shared_batches
from alexnet_jax.data.host_batch import JPEG_BYTES_PER_PIXEL, DecodeSplit
from alexnet_jax.errors import DamagedRecordError


class BatchReader:
  """Host batch b of the training stream (`seed` given) or of the eval pass (in order, padded
  and masked): which examples it holds, decoded into one array."""

  def __init__(self, split: image_source.Split, *, image_size: int, global_batch: int,
               host_batch: int, host_index: int, steps_per_epoch: int, seed: int | None = None,
               decode_split: DecodeSplit | None = None, skip_damaged: bool = False):
    self.split, self.image_size, self.seed = split, image_size, seed   # seed None: eval
    self.global_batch, self.host_batch, self.host_index = global_batch, host_batch, host_index
    self.steps_per_epoch, self.skip_damaged = steps_per_epoch, skip_damaged
    # The rows whose JPEG bytes go to the devices; None: the host decodes every row.
    self.on_device = None
    if decode_split is not None and decode_split.host_rows < decode_split.per_device:
      self.on_device = decode_split.on_device(host_batch)
    self.local = None   # the slots of the decoding threads of this process, if they decode
    self._orders, self._lock = {}, threading.Lock()

  def __getstate__(self):   # sent to the decoding processes without its lock, cache and slots
    state = dict(self.__dict__)
    del state['_orders'], state['_lock'], state['local']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state, local=None, _orders={}, _lock=threading.Lock())

  @property
  def layout(self) -> shared_batches.Layout:
    fields = [('image', (self.host_batch, self.image_size, self.image_size, 3), np.uint8),
              ('label', (self.host_batch,), np.int32), ('index', (self.host_batch,), np.int64)]
    if self.seed is None:
      fields.append(('mask', (self.host_batch,), np.float32))
    if self.on_device is not None:
      room = int(self.on_device.sum() * self.image_size**2 * JPEG_BYTES_PER_PIXEL)
      fields += [('jpeg', (room,), np.uint8),
                 ('jpeg_offsets', (self.host_batch + 1,), np.int64)]
    return shared_batches.Layout(tuple(fields))

  def _epoch_order(self, epoch: int) -> np.ndarray:
    """The split's examples in epoch `epoch`'s order: a function of (seed, epoch)."""
    with self._lock:
      if epoch not in self._orders:
        self._orders.clear()   # epochs are read in turn: one is enough
        rng = np.random.default_rng([self.seed, epoch])
        self._orders[epoch] = rng.permutation(self.split.examples)
      return self._orders[epoch]

  def examples(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the source, whether each row is an example rather than padding)."""
    rows = self.host_index * self.host_batch + np.arange(self.host_batch)
    if self.seed is None:
      positions = b * self.global_batch + rows
      real = positions < self.split.examples
      return self.split.start + np.where(real, positions, 0), real
    epoch, step = divmod(b, self.steps_per_epoch)
    order = self._epoch_order(epoch)
    return self.split.start + order[step * self.global_batch + rows], np.ones(len(rows), bool)

  def __call__(self, b: int) -> dict:
    """{'ring', 'slot'}: where batch `b` now is (grain carries the number, not the pixels)."""
    indices, real = self.examples(b)
    ring = shared_batches.worker_ring()   # in a decoding process
    slot, batch = (ring or self.local).claim()
    images, labels = batch['image'], batch['label']
    offsets = batch.get('jpeg_offsets')
    end, skipped = 0, []
    for row, (index, is_example) in enumerate(zip(indices.tolist(), real.tolist())):
      if offsets is not None:
        offsets[row] = end
      read = self._read(b, row, index, batch, end, skipped) if is_example else None
      if read is None:   # padding, or a damaged record evaluation leaves out
        images[row] = 0
        labels[row] = real[row] = 0
      else:
        labels[row], end, indices[row] = read
    if offsets is not None:
      offsets[-1] = end
    batch['index'][:] = np.where(real, indices, -1)
    if 'mask' in batch:
      batch['mask'][:] = real
    handle = {'ring': ring.index if ring else 0, 'slot': slot}
    if skipped:
      handle['skipped'] = (b, skipped)
    return handle

  def _put_row(self, row: int, index: int, batch: dict, end: int) -> tuple[int, int]:
    """Example `index` into row `row` of `batch`: its JPEG's bytes at `end` of batch['jpeg']
    if a device decodes the row and they fit, else its pixels. (Its label, the new end.)"""
    jpeg = batch.get('jpeg')
    stored = self.split.source.jpeg(index) if jpeg is not None and self.on_device[row] else None
    if stored is not None and len(stored[1]) <= len(jpeg) - end:
      jpeg[end:end + len(stored[1])] = np.frombuffer(stored[1], np.uint8)
      return stored[0], end + len(stored[1])
    return self.split.source.read_into(index, batch['image'][row]), end

  def _read(self, b: int, row: int, index: int, batch: dict, end: int,
            skipped: list) -> tuple[int, int, int] | None:
    """Example `index` into row `row` of batch `b` (`_put_row`): (its label, the new end, the
    example read). A damaged record (DamagedRecordError) stops the reading, or with
    `skip_damaged` is noted in `skipped` and left out: in evaluation the row is masked
    (None), in training another example of the global batch takes its place, chosen from
    (seed, b, row) alone, so that a resumed run reads what an uninterrupted one reads."""
    try:
      return (*self._put_row(row, index, batch, end), index)
    except DamagedRecordError as e:
      if not self.skip_damaged:
        raise
      damaged = e
    if self.seed is None:
      skipped.append(f'{damaged.description} Evaluation batch {b} leaves it out.')
      return None
    epoch, step = divmod(b, self.steps_per_epoch)
    start = step * self.global_batch
    members = self.split.start + self._epoch_order(epoch)[start:start + self.global_batch]
    own = self.host_index * self.host_batch + row
    for other in np.random.default_rng([self.seed, b, own]).permutation(self.global_batch):
      if other == own:
        continue
      try:
        label, end = self._put_row(row, int(members[other]), batch, end)
      except DamagedRecordError:
        continue
      skipped.append(f'{damaged.description} Step {b + 1} reads record {members[other]} of '
                     'the split in its place.')
      return label, end, int(members[other])
    raise damaged   # every example of the batch is damaged
