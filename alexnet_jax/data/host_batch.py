"""The batch that crosses from the host to the devices, and who decodes which of its rows.

The loader makes one `HostBatch` per step: this host's rows of the global batch.
A row is decoded on the host (its pixels are in `image`) or on the device that
takes it (its JPEG bytes are in `jpeg`, at `jpeg_offsets`); `to_devices.py`
turns it into the device batch the steps take, and nothing past that learns
where a row was decoded.

Which rows the devices decode is fixed by the config (`DecodeSplit`), not
measured as a run goes: a resumed run decodes every row where the uninterrupted
one did, and so gets the same pixels.
"""

import dataclasses

import numpy as np

# Room for the JPEG bytes of the device's rows, per row: a byte per pixel, a third of the raw
# pixels' size. A stored JPEG of a real photo takes a tenth (20 KiB at 256x256, quality 90),
# and the room is shared by a batch's rows; a row whose JPEG does not fit in what is left is
# decoded on the host (the same row every time: the batch is a function of its step).
JPEG_BYTES_PER_PIXEL = 1


@dataclasses.dataclass(frozen=True)
class HostBatch:
  """This host's rows of one global batch."""
  image: np.ndarray           # uint8 [B, S, S, 3]: the pixels of the rows the host decoded
  label: np.ndarray           # int32 [B]
  index: np.ndarray           # int64 [B]: each row's image in its source (-1: padding)
  mask: np.ndarray | None = None          # float32 [B], evaluation only: 0 for padding
  jpeg: np.ndarray | None = None          # uint8 [N]: the JPEGs of the rows the devices decode
  jpeg_offsets: np.ndarray | None = None  # int64 [B + 1]: row r's are jpeg[o[r]:o[r + 1]]

  @classmethod
  def from_arrays(cls, arrays: dict) -> 'HostBatch':
    """From a slot's arrays (`loader` lays them out); the slot lives as long as they do."""
    return cls(**{field.name: arrays.get(field.name) for field in dataclasses.fields(cls)})

  def jpeg_of(self, row: int) -> np.ndarray | None:
    """Row `row`'s JPEG bytes if a device decodes it, else None."""
    if self.jpeg_offsets is None:
      return None
    start, stop = self.jpeg_offsets[row], self.jpeg_offsets[row + 1]
    return self.jpeg[start:stop] if stop > start else None

  def arrays(self) -> dict:
    """The fields the steps take, for a batch whose every row the host decoded."""
    fields = {'image': self.image, 'label': self.label}
    if self.mask is not None:
      fields['mask'] = self.mask
    return fields


@dataclasses.dataclass(frozen=True)
class DecodeSplit:
  """Which rows of a host batch the devices decode: of each device's block of `per_device`
  rows, the first `host_rows` on the host and the rest on the device."""
  per_device: int
  host_rows: int

  @classmethod
  def of(cls, per_device: int, host_share: float) -> 'DecodeSplit':
    return cls(per_device, min(per_device, round(host_share * per_device)))

  def on_device(self, host_batch: int) -> np.ndarray:
    """bool [host_batch]: whether a device decodes each row."""
    return np.arange(host_batch) % self.per_device >= self.host_rows
