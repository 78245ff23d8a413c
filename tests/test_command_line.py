"""A --config.FIELD the config lacks, as users type it: one line naming the closest fields;
a config file that is not there, or a variant it does not have: one line saying so."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


MAIN = ['main.py', '--config=configs/alexnet.py', '--workdir=/nonexistent/never_written']
# --config as two words.
COMMAND = ['-m', 'alexnet_jax.commands.evaluate_workdirs', '--config', 'configs/alexnet.py:demo',
           '--workdirs=/nonexistent/a']


@pytest.mark.parametrize('command, field, unknown, closest', [
    (MAIN, 'batch_size', 'batch_size', 'global_batch_size'),
    (MAIN, 'plateau.patients', 'plateau.patients', 'plateau.patience'),
    (MAIN, 'plateu.patience', 'plateu', 'plateau'),   # the group misspelt: named, not its field
    (COMMAND, 'batch_size', 'batch_size', 'global_batch_size'),
    (COMMAND, 'plateau.patients', 'plateau.patients', 'plateau.patience'),
], ids=['main-flat', 'main-nested', 'main-group', 'command-flat', 'command-nested'])
def test_an_unknown_field_is_named_with_the_closest_ones(command, field, unknown, closest):
  result = _run(*command, f'--config.{field}=3')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f'error: --config.{field}: ')
  assert f'has no field {unknown};' in message
  assert f'did you mean {closest}' in message


def test_an_unknown_field_of_a_default_config_is_named():
  """weights' --config has a default: ml_collections applies the overrides as the flag is
  defined, before the command line is parsed."""
  result = _run('-m', 'alexnet_jax.commands.weights', 'import', '--workdir=/nonexistent/w',
                '--config.widht=0.5')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --config.widht: the config configs/alexnet.py:torchvision has no field widht; '
      'did you mean width?')


def test_fields_that_exist_pass():
  """Valid overrides reach absl's own checks: here the missing --workdir."""
  result = _run('main.py', '--config=configs/alexnet.py', '--config.plateau.patience=3',
                '--config.global_batch_size=256')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert '--workdir must have a value' in result.stderr
  assert 'has no field' not in result.stderr


@pytest.mark.parametrize('command', [MAIN, COMMAND], ids=['main', 'command'])
def test_a_config_file_that_is_not_there_is_named_with_the_configs_that_are(command):
  """ml_collections would report it only when training first reads the config."""
  args = [a.replace('configs/alexnet.py', 'configs/alexnet_typo.py') for a in command]
  result = _run(*args)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: --config=configs/alexnet_typo.py')
  assert 'there is no file configs/alexnet_typo.py' in result.stderr
  assert 'the configs are configs/alexnet.py' in result.stderr


def test_an_unknown_variant_is_answered_with_the_configs_own_message():
  result = _run('main.py', '--config=configs/alexnet.py:dmeo', '--workdir=/nonexistent/w')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert re.fullmatch(
      r"error: --config=configs/alexnet\.py:dmeo: Unknown config variant 'dmeo': use paper, "
      r'owt, demo, imagenette, claims or torchvision\. \(ValueError at configs/alexnet\.py:\d+\)',
      result.stderr.strip().splitlines()[-1])
