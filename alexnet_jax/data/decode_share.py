"""Which rows the host decodes and which the GPUs do, from their measured rates.

With `decode_host_share='auto'`, before step 1 each host reads a few batches twice: every
row decoded by its cores (the loader alone: H images/s), then every row decoded by the GPUs
(the loader handing JPEG bytes to `to_devices.ToDevices`, its lanes all busy: G images/s).
Both decode at once in training, so each device's rows are split in the ratio of their
rates: H / (H + G) of them on the host, in whole multiples of 8 (the rows of a JPEG engine's
batch stay whole). Process 0's split is every host's, so all hosts read the same rows.

The split is kept in the checkpoint's loop state: a resumed run decodes each row where the
interrupted one did, and so reads the same pixels (nvJPEG and libjpeg-turbo round
differently, `gpu_decode.py`).
"""

import logging
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from alexnet_jax.data.host_batch import DecodeSplit

# Batches timed for each rate, after one that starts the loader and warms the decoders.
MEASURED_BATCHES = 6
# The rows of a device's block go to the host in multiples of this.
ROW_MULTIPLE = 8


def settle(put, dataset, start_step: int, saved: int | None) -> int | None:
  """Fixes `put`'s split where `put` decodes on the devices with 'auto': the saved one
  (`saved`: host rows of each device's block, from the checkpoint) or else a measured one.
  Returns the host rows of each device's block to save (None: the host decodes every row)."""
  if put.per_device is None:
    return None
  if put.decode_split is not None:   # given as a share in the config
    return put.decode_split.host_rows
  if saved is not None:
    host_rows = min(int(saved), put.per_device)
    logging.info('Of each device\'s %d rows, %d are decoded on the host, as before the '
                 'resume.', put.per_device, host_rows)
  else:
    host, gpu = measure(put, dataset, start_step)
    host_rows = _shared(split_rows(put.per_device, host, gpu))
    logging.info('Measured before step %d: the host decodes %.0f images/s, the GPUs %.0f; of '
                 'each device\'s %d rows, %d are decoded on the host.', start_step + 1, host,
                 gpu, put.per_device, host_rows)
  put.set_split(host_rows)
  return host_rows


def split_rows(per_device: int, host_rate: float, gpu_rate: float) -> int:
  """The host's rows of a device's block of `per_device`: its share of the two rates, to the
  nearest multiple of ROW_MULTIPLE or the whole block (the fewer rows on a tie)."""
  wanted = per_device * host_rate / (host_rate + gpu_rate)
  choices = sorted({*range(0, per_device, ROW_MULTIPLE), per_device})
  return min(choices, key=lambda rows: abs(rows - wanted))


def measure(put, dataset, start_step: int,
            batches: int = MEASURED_BATCHES) -> tuple[float, float]:
  """(host images/s, GPU images/s) on this host's batches after `start_step`: every row
  decoded by the loader alone, then every row decoded by `put`'s lanes."""
  host = _rate(dataset.train_batches(start_step), batches)
  all_gpu = DecodeSplit(put.per_device, 0)
  gpu = _rate(dataset.train_batches(start_step, put=put, split=all_gpu), batches)
  return host, gpu


def _rate(stream, batches: int) -> float:
  """Rows per second of `stream` over `batches` batches after its first."""
  try:
    first = next(stream)
    rows = (first['label'] if isinstance(first, dict) else first.label).shape[0]
    del first
    begin = time.perf_counter()
    for _ in range(batches):
      next(stream)   # a device batch is on the devices, complete, when handed on
    return rows * batches / (time.perf_counter() - begin)
  finally:
    stream.close()


def _shared(host_rows: int) -> int:
  """Process 0's `host_rows`, on every host."""
  if jax.process_count() == 1:
    return host_rows
  return int(multihost_utils.broadcast_one_to_all(np.int32(host_rows)))
