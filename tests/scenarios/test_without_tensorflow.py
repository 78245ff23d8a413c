"""A host with JAX but no TensorFlow (GPU hosts, JAX containers) trains, writes its
TensorBoard summaries, saves, resumes, and measures itself with `benchmark_host`."""

import os
import pathlib
import subprocess
import sys

import pytest

from alexnet_jax.benchmarking import throughput
from alexnet_jax.data import loader
from alexnet_jax.loop import summaries

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def without_tensorflow(tmp_path):
  """An environment in which `import tensorflow` (and TFDS) fails, as where it is not
  installed: packages of those names that raise ImportError come first on the path."""
  stubs = tmp_path / 'no_tensorflow'
  for name in ('tensorflow', 'tensorflow_datasets'):
    (stubs / name).mkdir(parents=True)
    (stubs / name / '__init__.py').write_text(f'raise ImportError("{name} is not installed")\n')
  env = dict(os.environ, PYTHONPATH=f'{stubs}{os.pathsep}{ROOT}')
  check = subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env,
                         capture_output=True, text=True)
  assert 'tensorflow is not installed' in check.stderr
  return env


@pytest.mark.slow
def test_the_host_benchmark_trains_main_and_resumes_without_tensorflow(without_tensorflow,
                                                                        tmp_path):
  work = tmp_path / 'host'
  output = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.commands.benchmark_host', f'--work={work}', '--images=48',
       '--stored_size=73', '--image_size=64', '--width=0.125', '--models=owt',
       '--batch_sizes=8', '--input_batch=8', '--steps=2', '--warmup=1', '--train_steps=4',
       '--resume_steps=2', '--log_every=2'],
      cwd=ROOT, env=without_tensorflow, capture_output=True, text=True, timeout=900)
  assert output.returncode == 0, output.stdout[-2000:] + output.stderr[-3000:]
  rows = [line.split(' | ')[0][2:] for line in output.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| what')]
  workers, threads = loader.auto_resources()
  inputs = [loader.Reading(workers=0, threads=loader.cores())] + (
      [loader.Reading(workers=workers, threads=threads)] if workers else [])
  assert rows == ['decode alone: the stored JPEGs, one thread',
                  f'decode alone: {loader.cores()} processes at once',
                  *(f'input alone: {throughput.describe_reading(r)}' for r in inputs),
                  'owt, batch 8: step alone', 'owt, batch 8: the loop',
                  'main.py, owt, batch 8, to step 4',
                  'main.py, owt, batch 8, to step 6 (resumed from 4)']
  # The run's summaries, written by TensorBoard's writer alone, read back here.
  scalars = summaries.read_scalars(str(work / 'main_run'))
  assert [step for step, _ in scalars['train/loss']] == [2, 4, 6]
  assert [step for step, _ in scalars['eval/top1_error']] == [4, 6]
  assert all(ms > 0 for _, ms in scalars['train/host_ms_per_step'])
