"""Which JAX backend runs the step, and a refusal to train a real dataset on the CPU when the
host has accelerators JAX cannot see (a CPU-only jaxlib on a GPU or TPU host).

`pip install -r requirements.txt` installs the CPU build of jaxlib; GPU and Cloud
TPU hosts need JAX's build for them (README, "Install"), or every step runs on
the host's CPU with only JAX's warning to say so.
"""

import jax
from jax._src import hardware_utils   # JAX's own look at the host's PCI devices

from alexnet_jax.errors import ConfigError

JAX_VERSION = jax.__version__
INSTALL = {
    'NVIDIA GPUs': f'pip install -r requirements.txt "jax[cuda12]=={JAX_VERSION}"',
    'Cloud TPU': f'pip install -r requirements.txt "jax[tpu]=={JAX_VERSION}"',
}
# A dataset this large is no smoke test: training it on a CPU by mistake wastes days.
REAL_DATASET_EXAMPLES = 5_000


def describe() -> str:
  """'gpu: 8 x NVIDIA H100 80GB HBM3 on 1 host (8 on this one)', and the like."""
  devices, local = jax.devices(), jax.local_devices()
  return (f'{jax.default_backend()}: {len(devices)} x {devices[0].device_kind} on '
          f'{jax.process_count()} host{"s" if jax.process_count() > 1 else ""} '
          f'({len(local)} on this one), JAX {JAX_VERSION}')


def attached_accelerators() -> dict[str, str]:
  """{kind: what shows it} of the accelerators attached to this host, found the way JAX
  itself looks for them before it picks a backend."""
  found = {}
  if hardware_utils.has_visible_nvidia_gpu():
    found['NVIDIA GPUs'] = 'NVIDIA device files in /dev'
  chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  if chips:
    found['Cloud TPU'] = f'{chips} TPU chips on the PCI bus'
  return found


def invisible_accelerators() -> dict[str, str]:
  """The attached accelerators JAX does not use: all of them when it runs on the CPU."""
  return attached_accelerators() if jax.default_backend() == 'cpu' else {}


def check_backend(train_examples: int, allow_cpu: bool) -> None:
  """Refuses a real dataset on the CPU backend of a host with accelerators JAX cannot see."""
  if allow_cpu or train_examples < REAL_DATASET_EXAMPLES:
    return
  hidden = invisible_accelerators()
  if not hidden:
    return
  kind, evidence = next(iter(hidden.items()))
  raise ConfigError(
      f'JAX runs on the CPU, but this host has {kind} ({evidence}) that it cannot see: the '
      f'installed jaxlib is the CPU build. Install JAX for them:\n'
      f'  {INSTALL[kind]}{"  (CUDA 13: jax[cuda13])" if kind == "NVIDIA GPUs" else ""}\n'
      f'To train {train_examples:,} images on the CPU anyway, pass --config.allow_cpu=true.')


def compute_dtype(configured: str) -> str:
  """The config's dtype; 'auto' is bfloat16 where matrix units run it natively (GPU, TPU),
  float32 on the CPU, where bfloat16 arithmetic is emulated."""
  if configured != 'auto':
    return configured
  return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
