"""Host batch -> the device batch the steps take: {'image': uint8 [B, S, S, 3], 'label'
[, 'mask']} as global arrays split over the mesh as the model's batch spec says.

Rows the host decoded travel as pixels; rows a device decodes travel as JPEG bytes, and a
decoder (`gpu_decode.GpuDecoder`, or a stand-in in tests) decodes them on that device,
into that device's block of the batch, beside the pixels of its host rows. Each device gets
one array of its rows; no pixel of a device-decoded row passes through the host.

With one lane (a decoder: its own decoders, one per local device, and its own streams) the
loader calls this on a background thread, one batch after another; with K lanes,
`in_flight.InFlight` puts K batches at once, one per lane, and the training thread takes
them back in order. Either way the batch is on the devices, complete, when it is handed on.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.data import gpu_decode
from alexnet_jax.data.host_batch import DecodeSplit, HostBatch
from alexnet_jax.data.in_flight import InFlight
from alexnet_jax.parallel import placement
from alexnet_jax.parallel.placement import BATCH_AXIS


def for_config(config, mesh: Mesh, spec: P, jpeg_store: bool) -> 'ToDevices':
  """The stage `config.decode` asks for (`gpu_decode.choose`, which logs who decodes and why),
  for batches of a dataset whose images are stored JPEGs if `jpeg_store`."""
  devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  decoders = gpu_decode.choose(config.decode, platform=jax.default_backend(),
                               jpeg_store=jpeg_store, devices=devices,
                               image_size=config.resize_size,
                               hardware_share=config.decode_hardware_share,
                               lanes=config.decode_in_flight)
  return ToDevices(mesh, spec, decoders=decoders,
                   host_batch=config.global_batch_size // jax.process_count(),
                   host_share=config.decode_host_share)


class ToDevices:
  """put(host batch) -> the global batch on the mesh's devices.

  `staging`: 'pinned' copies host arrays into page-locked host memory first, so that the
  copy to the device is a DMA; 'none' copies from the batch's own (pageable) memory; 'auto' is
  'pinned' on GPUs, where JAX offers it, and 'none' elsewhere.
  `decoders`: one per lane, each decoding the rows that carry JPEG bytes on their device
  (`decoder`: one lane); none: the host decodes every row. With decoders, `host_batch` is
  this host's rows of a batch, and `host_share` the share of each device's rows the host
  decodes anyway (`host_batch.DecodeSplit`), or 'auto': none until `set_split` (the
  measured split, `decode_share.settle`).
  """

  def __init__(self, mesh: Mesh, spec: P = P(BATCH_AXIS), staging: str = 'auto',
               decoder=None, host_batch: int = 0, host_share: float | str = 0.0,
               decoders=None):
    self._mesh, self._spec = mesh, spec
    self._on_devices = NamedSharding(mesh, spec)
    if staging == 'auto':
      staging = 'pinned' if _offers_pinned_memory(mesh) and jax.default_backend() == 'gpu' else 'none'
    if staging not in ('pinned', 'none'):
      raise ValueError(f"staging={staging!r}: use 'pinned', 'none' or 'auto'.")
    self._staging = (NamedSharding(mesh, spec, memory_kind='pinned_host')
                     if staging == 'pinned' else None)
    self.lanes = list(decoders or ()) or ([decoder] if decoder is not None else [])
    # Batches put at once: one per lane (1 without decoders: the host decoded them all).
    self.in_flight = max(1, len(self.lanes))
    # Which rows the devices decode; None while the host decodes all of them.
    self.decode_split = None
    self.per_device = None   # rows of a device's block, with decoders
    if self.lanes:
      self._blocks = _local_blocks(self._on_devices, host_batch)
      self.per_device = self._blocks[0][1] - self._blocks[0][0]
      if host_share != 'auto':
        self.decode_split = DecodeSplit.of(self.per_device, host_share)

  def set_split(self, host_rows: int) -> None:
    """Of each device's block, the first `host_rows` decoded on the host from now on."""
    self.decode_split = DecodeSplit(self.per_device, host_rows)

  def __call__(self, batch: HostBatch) -> dict:
    return self.put_on(self.lanes[0] if self.lanes else None, batch)

  def stream(self, host_batches) -> InFlight:
    """The device batches of `host_batches`, in order, `in_flight` put at once."""
    return InFlight(host_batches, self.lanes, self.put_on)

  def put_on(self, lane, batch: HostBatch) -> dict:
    """`batch` on the devices, its JPEG rows decoded by `lane`, a decoder of `decoders`."""
    if batch.jpeg_offsets is None:
      return jax.block_until_ready(self._put(batch.arrays()))
    fields = {'label': batch.label}
    if batch.mask is not None:
      fields['mask'] = batch.mask
    arrays = self._put(fields)
    arrays['image'] = self._decoded_images(lane, batch)
    return jax.block_until_ready(arrays)

  def _put(self, fields: dict) -> dict:
    if self._staging is None:
      return placement.shard_batch(fields, self._mesh, self._spec)
    return jax.device_put(
        jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._staging, x), fields),
        self._on_devices)

  def _decoded_images(self, lane, batch: HostBatch) -> jax.Array:
    """The global image array: each device's block decoded on that device by `lane`."""
    per_device = []
    for start, stop, device in self._blocks:
      jpegs = {row - start: batch.jpeg_of(row) for row in range(start, stop)}
      jpegs = {row: data for row, data in jpegs.items() if data is not None}
      per_device.append(lane.decode(device, batch.image[start:stop], jpegs,
                                    batch.index[start:stop]))
    rows = batch.image.shape[0] * jax.process_count()
    return jax.make_array_from_single_device_arrays(
        (rows, *batch.image.shape[1:]), self._on_devices, per_device)


def _local_blocks(sharding: NamedSharding,
                  host_batch: int) -> list[tuple[int, int, jax.Device]]:
  """(first row, end row, device) for each of this host's devices, in rows of its batch; a
  device that shares its rows with others (along a `model` axis) decodes them too."""
  rows = host_batch * jax.process_count()
  indices = sharding.addressable_devices_indices_map((rows,))
  blocks = [(s[0].start or 0, rows if s[0].stop is None else s[0].stop, d)
            for d, s in indices.items()]
  first = min(start for start, _, _ in blocks)
  return sorted(((a - first, b - first, d) for a, b, d in blocks),
                key=lambda block: (block[0], block[2].id))


def _offers_pinned_memory(mesh: Mesh) -> bool:
  device = mesh.devices.flat[0]
  return any(memory.kind == 'pinned_host' for memory in device.addressable_memories())
