"""Joining a multi-host job: Cloud TPU VMs as JAX's cluster detection sees them, and several
processes without JAX's distributed client refused."""

import logging

import jax
import pytest

from alexnet_jax import errors
from alexnet_jax.parallel import distributed


@pytest.fixture
def calls(monkeypatch):
  """jax.distributed.initialize replaced by a recorder; no real client is started."""
  made = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: made.append((a, k)))
  for name in distributed._CLUSTER_HINTS:
    monkeypatch.delenv(name, raising=False)
  return made


def test_a_cloud_tpu_vm_joins_its_slice_without_arguments(calls, monkeypatch):
  # JAX sets this on import when it finds TPU chips and libtpu; its cluster detection then
  # asks the VM's metadata server for the slice's hosts.
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', True)
  distributed.initialize_distributed(heartbeat_timeout_seconds=7)
  assert calls == [((), {'heartbeat_timeout_seconds': 7})]


def test_a_tpu_vm_that_finds_no_coordinator_trains_as_one_host(monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', True)

  def no_cluster(**kwargs):
    raise ValueError('coordinator_address should be defined.')

  monkeypatch.setattr(jax.distributed, 'initialize', no_cluster)
  distributed.initialize_distributed()
  assert 'training as one host' in caplog.text


def test_other_initialization_errors_are_not_swallowed(monkeypatch):
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', True)

  def broken(**kwargs):
    raise ValueError('process_id and num_processes must be nonnegative')

  monkeypatch.setattr(jax.distributed, 'initialize', broken)
  with pytest.raises(ValueError, match='nonnegative'):
    distributed.initialize_distributed()


def test_a_plain_host_joins_nothing(calls, monkeypatch):
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  distributed.initialize_distributed()
  assert calls == []


@pytest.mark.parametrize('name, value', [('SLURM_STEP_NUM_TASKS', '4'),
                                         ('OMPI_COMM_WORLD_SIZE', '2'),
                                         ('TPU_WORKER_HOSTNAMES', 'host-0,host-1')])
def test_job_schedulers_are_joined_from_their_environment(calls, monkeypatch, name, value):
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  monkeypatch.setenv(name, value)
  distributed.initialize_distributed()
  assert len(calls) == 1


def test_several_processes_without_the_distributed_client_are_refused(calls, monkeypatch):
  monkeypatch.setattr(distributed.cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  with pytest.raises(errors.ConfigError, match='process 1 of 4.*preemption'):
    distributed.initialize_distributed()
