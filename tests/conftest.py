"""Test set-up: JAX on the CPU, split into simulated devices before it starts."""

import os
import pathlib

import pytest

# 2 simulated devices; tests/test_model_parallel.py runs its checks again in a process of 4.
NUM_DEVICES = int(os.environ.get('ALEXNET_TEST_DEVICES', '2'))
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={NUM_DEVICES}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after the flags above)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'
IMAGENETTE = SHARED / 'data' / 'imagenette'


@pytest.fixture(scope='session', autouse=True)
def _check_devices():
  assert jax.device_count() == NUM_DEVICES, (
      f'expected {NUM_DEVICES} simulated CPU devices, got {jax.devices()}: '
      'was JAX imported before tests/conftest.py set XLA_FLAGS?')


def tiny_config(variant: str = 'demo'):
  """A narrow model on 64x64 images: the smallest input AlexNet's geometry takes."""
  from configs import alexnet
  config = alexnet.get_config(variant)
  config.width = 0.125
  config.image_size = 64
  config.resize_size = 73
  config.global_batch_size = 8
  config.shuffle_buffer = 16
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.synthetic.train_examples = 64
  config.synthetic.eval_examples = 13
  return config


def saved_state(workdir, step: int) -> dict:
  """The arrays of checkpoint `step` in `workdir`, read with Orbax directly."""
  import orbax.checkpoint as ocp
  return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
