"""The platform in the log, and a real dataset refused on the CPU of a host with accelerators
JAX cannot see."""

import logging

import jax
import pytest

from alexnet_jax import errors, train
from alexnet_jax.parallel import backend
from tests.conftest import NUM_DEVICES, tiny_config


@pytest.fixture
def gpu_host(monkeypatch):
  """A host where JAX's own check finds NVIDIA device files, while JAX runs on the CPU."""
  monkeypatch.setattr(backend.hardware_utils, 'has_visible_nvidia_gpu', lambda: True)


@pytest.fixture
def no_accelerators(monkeypatch):
  monkeypatch.setattr(backend.hardware_utils, 'has_visible_nvidia_gpu', lambda: False)
  monkeypatch.setattr(backend.hardware_utils, 'num_available_tpu_chips_and_device_id',
                      lambda: (0, None))


def test_a_real_dataset_on_the_cpu_of_a_gpu_host_is_refused_with_the_install_line(gpu_host):
  assert jax.default_backend() == 'cpu'
  with pytest.raises(errors.ConfigError) as raised:
    backend.check_backend(train_examples=1_281_167, allow_cpu=False)
  message = str(raised.value)
  assert f'pip install -r requirements.txt "jax[cuda12]=={jax.__version__}"' in message
  assert 'NVIDIA device files' in message and '--config.allow_cpu=true' in message
  backend.check_backend(train_examples=1_281_167, allow_cpu=True)   # the override
  backend.check_backend(train_examples=100, allow_cpu=False)        # a smoke test is let be


def test_the_trainer_refuses_before_training_and_logs_its_platform(gpu_host, tmp_path,
                                                                   monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  config = tiny_config()
  config.num_train_steps, config.eval_every_steps = 1, 1
  monkeypatch.setattr(backend, 'REAL_DATASET_EXAMPLES', 10)   # the 64 synthetic images
  with pytest.raises(errors.ConfigError, match='cannot see'):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused' / 'checkpoints').exists()
  config.allow_cpu = True
  train.train_and_evaluate(config, str(tmp_path / 'allowed'))
  assert f'Training on cpu: {NUM_DEVICES} x cpu on 1 host ({NUM_DEVICES} on this one)' in caplog.text


def test_a_tpu_host_gets_the_tpu_install_line(no_accelerators, monkeypatch):
  monkeypatch.setattr(backend.hardware_utils, 'num_available_tpu_chips_and_device_id',
                      lambda: (4, None))
  with pytest.raises(errors.ConfigError, match=r'(?s)4 TPU chips .*"jax\[tpu\]=='):
    backend.check_backend(train_examples=1_281_167, allow_cpu=False)


def test_a_host_without_accelerators_trains_on_its_cpu(no_accelerators):
  assert backend.invisible_accelerators() == {}
  assert backend.check_backend(train_examples=1_281_167, allow_cpu=False) is None   # no refusal


def test_auto_computes_in_float32_on_the_cpu_and_bfloat16_on_accelerators(monkeypatch):
  assert backend.compute_dtype('auto') == 'float32'
  for name in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda: name)
    assert backend.compute_dtype('auto') == 'bfloat16'
  assert backend.compute_dtype('float32') == 'float32'   # as configured, anywhere
