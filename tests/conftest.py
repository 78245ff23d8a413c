"""Test set-up: JAX on the CPU, split into simulated devices before it starts."""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

# 2 simulated devices; tests/parallel/test_placement.py runs its checks again in a process of 4.
NUM_DEVICES = int(os.environ.get('ALEXNET_TEST_DEVICES', '2'))
os.environ['JAX_PLATFORMS'] = 'cpu'
# XLA's CPU backend without LLVM's optimisations: the tests' tiny models spend seconds compiling
# each step and milliseconds running it, and this halves the compile (the same XLA program and
# fusions; only the machine code is less tuned). `process_env` passes it on to test processes.
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={NUM_DEVICES} {FAST_COMPILE}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One XLA compilation cache for the run, shared with the processes the tests start: many tests
# train the same tiny model, and each new run compiles the same steps again; a hit skips XLA.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='alexnet_jax_tests_xla_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402  (after the flags above)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'
IMAGENETTE = SHARED / 'data' / 'imagenette'


@pytest.fixture(scope='session', autouse=True)
def _check_devices():
  assert jax.device_count() == NUM_DEVICES, (
      f'expected {NUM_DEVICES} simulated CPU devices, got {jax.devices()}: '
      'was JAX imported before tests/conftest.py set XLA_FLAGS?')


def process_env(devices: int = NUM_DEVICES) -> dict:
  """The environment of a process a test starts: JAX on `devices` simulated CPU devices,
  compiled as in the tests themselves."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}'}


def tiny_config(variant: str = 'demo'):
  """A narrow model on 64x64 patches of 73x73 images, read in this process."""
  from configs import alexnet
  config = alexnet.get_config(variant)
  config.width = 0.125
  config.image_size = 64
  config.resize_size = 73
  config.global_batch_size = 8
  config.data_workers = 0
  config.data_threads = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.synthetic.train_examples = 64
  config.synthetic.eval_examples = 13
  return config


def run_config(num_train_steps: int, **overrides):
  """`tiny_config` trained `num_train_steps`, evaluated every 2 steps unless `overrides` say
  otherwise."""
  config = tiny_config()
  config.num_train_steps = num_train_steps
  config.eval_every_steps = 2
  for key, value in overrides.items():
    config[key] = value
  return config


def plateau_config(num_train_steps: int, **overrides):
  """`run_config` with the plateau rule, a rate set by the step alone (not the demo's cosine,
  which depends on the run's length): for runs stopped early and resumed to a nearer end."""
  return run_config(num_train_steps,
                    **{'eval_every_steps': 1000, 'lr_schedule': 'plateau', **overrides})


def steps_saved(workdir) -> list[int]:
  """The steps of the checkpoints in `workdir`, oldest first."""
  folder = pathlib.Path(workdir, 'checkpoints')
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def write_image_folder(root, classes=('cat', 'dog', 'fox'), train=7, val=3, seed=0):
  """ROOT/train/<class>/ with `train` JPEGs of assorted sizes each, ROOT/val/<class>/ with `val`;
  each class a brightness band of its own, so a network can tell them apart."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  for split, count in (('train', train), ('val', val)):
    for c, name in enumerate(classes):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        size = (rng.integers(70, 130), rng.integers(70, 130))
        pixels = rng.integers(0, 256, (*size, 3)) // 4 + 60 * c
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{i}.jpg',
                                                      quality=95)
  return root


def assert_same_tree(a, b) -> None:
  """Every leaf of `a` equals the leaf of `b` at its place, exactly; no leaf missing."""
  import numpy as np
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def saved_state(workdir, step: int) -> dict:
  """The arrays of checkpoint `step` in `workdir`, read with Orbax directly."""
  import orbax.checkpoint as ocp
  return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


_FILE_SECONDS = {}


def pytest_runtest_logreport(report):
  """Adds each test's set-up, call and tear-down time to its file's."""
  path = report.nodeid.split('::')[0]
  _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
  """The time of each test file, slowest first: where the suite's minutes go."""
  if not _FILE_SECONDS:
    return
  terminalreporter.section('seconds per test file')
  for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1]):
    terminalreporter.write_line(f'{seconds:8.1f}  {path}')
