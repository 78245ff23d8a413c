"""The seam between the loader and the devices: rows that travel as JPEG bytes, decoded on the
device that takes them (a stand-in decoder here: CI has no GPU), equal the rows the host
decodes; the switch that picks the decoder, and its messages."""

import logging

import jax
import numpy as np
import pytest
import simplejpeg
from jax.sharding import PartitionSpec as P

from alexnet_jax import errors
from alexnet_jax.data import (batch_reader, gpu_decode, image_source, loader, prepare, store,
                              to_devices)
from alexnet_jax.data.host_batch import DecodeSplit
from alexnet_jax.parallel import placement
from tests.conftest import write_image_folder


class StandInDecoder:
  """Decodes on the host with libjpeg-turbo and puts the block on its device; records which
  rows each device was asked to decode."""

  def __init__(self):
    self.decoded = {}   # device -> [(row of the block, source index)]

  def decode(self, device, pixels, jpegs, index):
    out = pixels.copy()
    for row, jpeg in jpegs.items():
      simplejpeg.decode_jpeg(np.asarray(jpeg), colorspace='RGB', buffer=out[row])
      self.decoded.setdefault(device, []).append((row, int(index[row])))
    return jax.device_put(out, device)


@pytest.fixture(scope='module')
def jpeg_store(tmp_path_factory):
  folder = write_image_folder(tmp_path_factory.mktemp('images'), train=6, val=3)
  out = tmp_path_factory.mktemp('store') / 'images_73'
  prepare.prepare(f'image_folder:{folder}', str(out),
                  prepare.Options(size=73, images_per_shard=5, workers=0), progress=False)
  return store.open_store(out)


def _data(prepared, workers=0, global_batch=8):
  splits = [image_source.Split(prepared.source_of(name), 0, prepared.examples(name))
            for name in ('train', 'validation')]
  return loader.make_data(*splits, name='test', num_classes=3, image_size=73,
                          global_batch=global_batch, seed=3,
                          reading=loader.Reading(workers=workers, threads=2))


def _batches(stream, count):
  try:
    return [jax.tree.map(np.asarray, next(stream)) for _ in range(count)]
  finally:
    stream.close()


@pytest.mark.parametrize('host_share, lanes', [(0.0, 1), (0.5, 1), (0.5, 3)])
@pytest.mark.parametrize('workers', [0, 1])
def test_rows_decoded_on_their_devices_equal_the_hosts(jpeg_store, host_share, lanes, workers):
  mesh = placement.make_mesh()
  dataset = _data(jpeg_store, workers)
  assert dataset.jpeg_store
  by_host = _batches(dataset.train_batches(2, put=to_devices.ToDevices(mesh)), 3)
  decoder = StandInDecoder()   # each lane's, here one and the same: it only records
  put = to_devices.ToDevices(mesh, decoders=[decoder] * lanes, host_batch=8,
                             host_share=host_share)
  by_devices = _batches(dataset.train_batches(2, put=put, split=put.decode_split), 3)
  for got, want in zip(by_devices, by_host, strict=True):
    assert got.keys() == want.keys() == {'image', 'label'}
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Each device decoded the rows of its own block, past the host's share of it.
  devices = list(mesh.devices.flat)
  assert set(decoder.decoded) == set(devices)
  host_rows = round(host_share * 4)
  for device in devices:
    rows = sorted({row for row, _ in decoder.decoded[device]})
    assert rows == list(range(host_rows, 4))


def test_an_eval_pass_decoded_on_the_devices_pads_and_masks_as_the_hosts(jpeg_store):
  mesh = placement.make_mesh()
  dataset = _data(jpeg_store)
  want = _batches(dataset.eval_batches(put=to_devices.ToDevices(mesh)), dataset.eval_steps)
  put = to_devices.ToDevices(mesh, decoder=StandInDecoder(), host_batch=8)
  got = _batches(dataset.eval_batches(put=put, split=put.decode_split), dataset.eval_steps)
  for g, w in zip(got, want, strict=True):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(g[key], w[key])
  assert sum(b['mask'].sum() for b in got) == jpeg_store.examples('validation')


def test_host_batches_carry_the_stored_jpegs_of_the_devices_rows(jpeg_store):
  dataset = _data(jpeg_store)
  split = DecodeSplit.of(per_device=4, host_share=0.25)
  stream = dataset.train_batches(0, split=split)
  try:
    batch = next(stream)
    source = jpeg_store.source_of('train')
    for row in range(8):
      stored = batch.jpeg_of(row)
      if row % 4 == 0:   # the host's rows: pixels, no bytes
        assert stored is None and batch.image[row].any()
      else:
        assert bytes(stored) == bytes(source.jpeg(int(batch.index[row]))[1])
  finally:
    stream.close()


def test_a_split_mesh_decodes_each_shared_block_on_every_device_of_it(jpeg_store):
  mesh = placement.make_mesh(model_axis_size=2)   # both devices take every row
  decoder = StandInDecoder()
  put = to_devices.ToDevices(mesh, P('batch'), decoder=decoder, host_batch=8)
  batch = _batches(_data(jpeg_store).train_batches(0, put=put, split=put.decode_split), 1)[0]
  want = _batches(_data(jpeg_store).train_batches(0, put=to_devices.ToDevices(mesh, P('batch'))),
                  1)[0]
  np.testing.assert_array_equal(batch['image'], want['image'])
  assert len(decoder.decoded) == 2
  assert all({row for row, _ in rows} == set(range(8)) for rows in decoder.decoded.values())


def test_the_host_decodes_what_the_gpu_refuses_and_names_what_nobody_can():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
  jpeg = np.frombuffer(simplejpeg.encode_jpeg(image, quality=90), np.uint8)
  np.testing.assert_array_equal(gpu_decode.host_fallback(jpeg, 16, 7),
                                simplejpeg.decode_jpeg(jpeg.tobytes(), colorspace='RGB'))
  with pytest.raises(errors.DataError, match=r'Image 7 .*cannot be decoded.*prepare it again'):
    gpu_decode.host_fallback(jpeg[:40], 16, 7)


def test_the_switch_decodes_on_the_host_unless_a_gpu_can(monkeypatch, caplog):
  choose = dict(devices=[], image_size=73, hardware_share=0.65)
  with caplog.at_level(logging.INFO):
    assert gpu_decode.choose('host', platform='gpu', jpeg_store=True, **choose) is None
    assert gpu_decode.choose('auto', platform='cpu', jpeg_store=True, **choose) is None
    assert gpu_decode.choose('auto', platform='gpu', jpeg_store=False, **choose) is None
  assert 'decode=host' in caplog.text and 'the devices are CPUs' in caplog.text
  assert 'not a store of JPEGs' in caplog.text
  with pytest.raises(errors.ConfigError, match=r'decode=device: the devices are TPUs.*decode=host'):
    gpu_decode.choose('device', platform='tpu', jpeg_store=True, **choose)

  def missing():
    raise ImportError("No module named 'nvidia.nvimgcodec'")

  monkeypatch.setattr(gpu_decode, '_import', missing)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert gpu_decode.choose('auto', platform='gpu', jpeg_store=True, **choose) is None
  [record] = [r for r in caplog.records if 'nvimgcodec' in r.getMessage()]
  assert record.levelno == logging.WARNING and gpu_decode.INSTALL in record.getMessage()
  with pytest.raises(errors.ConfigError, match=r'not installed.*pip install'):
    gpu_decode.choose('device', platform='gpu', jpeg_store=True, **choose)


def test_a_jpeg_that_does_not_fit_the_room_left_is_decoded_on_the_host(jpeg_store, monkeypatch):
  # Room for the bytes of one or two of the store's JPEGs per batch of 8 rows.
  source = jpeg_store.source_of('train')
  largest = max(len(source.jpeg(i)[1]) for i in range(len(source)))
  monkeypatch.setattr(batch_reader, 'JPEG_BYTES_PER_PIXEL', 1.5 * largest / (8 * 73 * 73))
  mesh = placement.make_mesh()
  decoder = StandInDecoder()
  put = to_devices.ToDevices(mesh, decoder=decoder, host_batch=8)
  stream = _data(jpeg_store).train_batches(0, split=put.decode_split)
  try:
    batch = next(stream)
    carried = [row for row in range(8) if batch.jpeg_of(row) is not None]
    assert 1 <= len(carried) < 8
    assert all(batch.image[row].any() for row in range(8) if row not in carried)
    got = jax.tree.map(np.asarray, put(batch))
  finally:
    stream.close()
  want = _batches(_data(jpeg_store).train_batches(0, put=to_devices.ToDevices(mesh)), 1)[0]
  np.testing.assert_array_equal(got['image'], want['image'])
