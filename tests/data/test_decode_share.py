"""decode_host_share='auto': each device's rows split between the host and the GPU by their
measured rates (stand-ins whose decodes wait a set time), the split kept for a resume, and
the config fields that ask for it."""

import pytest

from alexnet_jax import config_checks, errors, optim
from alexnet_jax.benchmarking import stand_in
from alexnet_jax.data import decode_share, image_source, loader, to_devices
from alexnet_jax.loop import saved_state
from alexnet_jax.parallel import placement
from tests.conftest import tiny_config

SIZE, BATCH = 64, 64


@pytest.mark.parametrize('per_device, host, gpu, rows', [
    (32, 1000, 1000, 16),    # half of 32
    (32, 1000, 3000, 8),     # a quarter: 8
    (32, 1000, 2000, 8),     # 10.7: 8 is nearer than 16
    (32, 100, 10_000, 0),    # 0.3 rows
    (32, 10_000, 1, 32),     # the whole block
    (4, 10_000, 1, 4),       # a block under 8 rows: all of it or none
    (4, 1, 10_000, 0),
    (20, 3, 1, 16),          # 15 of 20: 16 is the nearest of 0, 8, 16 and 20
])
def test_the_hosts_rows_are_its_share_of_the_rates_in_multiples_of_8(per_device, host, gpu,
                                                                     rows):
  assert decode_share.split_rows(per_device, host, gpu) == rows


def _data(host_s):
  source = stand_in.SleepingSource(stand_in.jpegs(64, SIZE) * 20, SIZE, host_s)
  split = image_source.Split(source, 0, len(source))
  return loader.make_data(split, split, name='stand-in', num_classes=4, image_size=SIZE,
                          global_batch=BATCH, seed=0,
                          reading=loader.Reading(workers=0, threads=2))


def _put(share='auto', gpu_s=0.001):
  decoders = [stand_in.SleepingDecoder(gpu_s) for _ in range(2)]
  return to_devices.ToDevices(placement.make_mesh(), decoders=decoders, host_batch=BATCH,
                              host_share=share)


def test_auto_measures_the_host_and_the_gpu_and_splits_by_their_rates():
  # The host waits 3 ms an image on 2 threads (667 images/s), the GPU 1 ms on 2 lanes
  # (2,000): a quarter of each device's 32 rows, 8.
  put = _put()
  assert put.decode_split is None   # the host decodes every row until the split is measured
  assert decode_share.settle(put, _data(0.003), 0, saved=None) == 8
  assert put.decode_split.host_rows == 8 and put.decode_split.per_device == 32


def test_a_resumed_run_keeps_its_saved_split_and_a_given_share_is_kept(monkeypatch):
  def measure(*args, **kwargs):
    raise AssertionError('a saved split is not measured again')

  monkeypatch.setattr(decode_share, 'measure', measure)
  put = _put()
  assert decode_share.settle(put, None, 10, saved=24) == 24
  assert put.decode_split.host_rows == 24
  assert decode_share.settle(_put(share=0.25), None, 0, saved=None) == 8
  no_gpu = to_devices.ToDevices(placement.make_mesh())
  assert decode_share.settle(no_gpu, None, 0, saved=None) is None


def test_the_loop_state_keeps_the_split_and_reads_checkpoints_without_it():
  state = saved_state.LoopState(optim.PlateauController(0.01))
  state.decode_host_rows = 24
  restored = saved_state.LoopState(optim.PlateauController(0.01))
  restored.load(state.saved())
  assert restored.decode_host_rows == 24
  older = state.saved()
  del older['decode_host_rows']
  restored.load(older)
  assert restored.decode_host_rows is None


@pytest.mark.parametrize('field, value, message', [
    ('decode_host_share', 'fast', "decode_host_share='fast' must be a share"),
    ('decode_host_share', 1.5, 'decode_host_share=1.5 must be a share'),
    ('decode_in_flight', 0, 'decode_in_flight=0 must be 1 to 8'),
])
def test_the_decode_fields_are_checked(field, value, message):
  config = tiny_config()
  config.decode_host_share = 'auto'
  config_checks.check(config, 2)
  config[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check(config, 2)
