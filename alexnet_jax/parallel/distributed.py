"""Joining the other hosts of a multi-host job, and refusing several for one-host commands."""

import logging
import os

import jax
# JAX's own verdict on whether this is a Cloud TPU VM, set when JAX is imported. No public API
# gives it: `jax.distributed.initialize()` refuses to run once JAX has computed anything, and
# would also try to bootstrap any Kubernetes pod.
from jax._src import cloud_tpu_init

from alexnet_jax.errors import ConfigError

# Environment variables that mean this process is one of several that
# `jax.distributed.initialize()` can join without arguments.
_CLUSTER_HINTS = ('JAX_COORDINATOR_ADDRESS', 'SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE',
                  'TPU_WORKER_HOSTNAMES')
# What jax.distributed.initialize() says when it finds no cluster to join.
_NO_COORDINATOR = 'coordinator_address should be defined'


def _in_cluster() -> bool:
  """Whether JAX can find peers to join: a Cloud TPU VM (whose slice may span hosts, found
  through its metadata server), or a job scheduler's environment."""
  if cloud_tpu_init.running_in_cloud_tpu_vm:
    return True
  for name in _CLUSTER_HINTS:
    value = os.environ.get(name, '')
    if name == 'TPU_WORKER_HOSTNAMES':
      if ',' in value:
        return True
    elif value and value != '1':
      return True
  return False


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 100) -> None:
  """Joins the other hosts of a multi-host job; a no-op on a single host.

  With an explicit coordinator address the job is joined as told; otherwise
  JAX finds its peers from the environment (Cloud TPU VMs and GKE, SLURM, Open
  MPI), as JAX's docs do it on Cloud TPU: a TPU VM that is a slice of its own
  finds no coordinator, and trains as one host. A host silent for
  `heartbeat_timeout_seconds` makes the others stop with an error instead of
  waiting for it forever.

  Several processes without JAX's distributed client (a TPU pod's runtime
  finds its hosts without it) are refused: without the client there is no
  preemption sync point, and a preemption would kill every host unsaved.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  elif _in_cluster():
    try:
      jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    except ValueError as e:
      if _NO_COORDINATOR not in str(e):
        raise
      logging.info('No multi-host job found to join (%s): training as one host.', e)
  if jax.process_count() > 1 and not jax.distributed.is_initialized():
    raise ConfigError(
        f'This is process {jax.process_index()} of {jax.process_count()}, but JAX\'s '
        'distributed client did not start, and without it a preemption would stop every '
        'host with nothing saved. Start each process with --coordinator_address=HOST:PORT '
        '--num_processes=N --process_id=I (HOST: process 0\'s), or set '
        'JAX_COORDINATOR_ADDRESS.')


def one_host_only(command: str) -> None:
  """Refuses to run `command`, which reads a workdir on one host, as one of several processes."""
  if jax.process_count() > 1:
    raise ConfigError(
        f'{command} runs on one host, and this is process {jax.process_index()} of '
        f'{jax.process_count()}. Run it on a single host that can read the workdir (a '
        'single-host VM, or this one with JAX_PLATFORMS=cpu), once.')
