"""The --config flag of main.py and of every command that takes one, and `run(main)`: a
`--config.FIELD` that the config lacks is answered in one line naming the closest fields, and
a config file that is not there, or that refuses its variant, in one line saying so.

ml_collections applies each `--config.FIELD=VALUE` as it parses --config: when absl parses
the command line in `app.run`, or, for a flag with a default config given no --config, as
the flag is defined. Either way an unknown FIELD raises AttributeError (KeyError for some
nested paths), three chained tracebacks deep; both places are caught here. A missing file
ml_collections reports only when the config is first read, once training has begun, and an
error of `get_config` inside absl's usage text; both are checked before absl parses.
"""

import difflib
import os
import pathlib
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

NAME = 'config'
_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def define_config_flag(help_string: str, default: str | None = None):
  """Defines --config: a config file (`path.py[:variant]`), locked, its fields overridable."""
  try:
    return config_flags.DEFINE_config_file(NAME, default, help_string, lock_config=True)
  except (AttributeError, KeyError):
    _exit_if(unknown_field_message(sys.argv, default))
    raise


def run(main) -> None:
  """absl's `app.run(main)`, its flags parsed by `parse_flags`."""
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  _exit_if(unloadable_config_message(argv))
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    _exit_if(unknown_field_message(argv, None))   # here --config is in argv, parsed with it
    raise   # not an unknown field: raised as it came


def _exit_if(message: str | None) -> None:
  if message is not None:
    sys.exit(f'error: {message}')


def unloadable_config_message(argv: list[str]) -> str | None:
  """Why the --config in `argv` cannot be loaded (its file is missing, or its `get_config`
  raised), naming the file and line that raised; None if it loads, or `argv` has no --config."""
  argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)   # --flagfile expanded
  source = _config_argument(argv)
  if source is None:
    return None   # absl says that --config is required
  path = source.split(':', 1)[0]
  if not os.path.isfile(path):
    configs = sorted(os.path.relpath(p) for p in _CONFIGS.glob('*.py'))
    return (f'--{NAME}={source}: there is no file {path} (relative paths start at '
            f'{os.getcwd()}); the configs are {", ".join(configs)}, e.g. '
            f'--{NAME}={configs[0]}:demo.')
  try:
    ConfigFileFlagParser(NAME).parse(source)
  except (TypeError, ValueError) as e:
    # ml_collections re-raises get_config's error as text; the error itself is its context.
    cause = e.__context__ or e
    frames = traceback.extract_tb(cause.__traceback__)
    where = f' at {os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}' if frames else ''
    return f'--{NAME}={source}: {" ".join(str(cause).split())} ({type(cause).__name__}{where})'
  return None


def unknown_field_message(argv: list[str], default: str | None = None) -> str | None:
  """For the first `--config.PATH` in `argv` that names no field of the config (the last
  --config in `argv`, else `default`): which part of PATH is unknown and the closest
  existing fields. None if every PATH exists, or the config file cannot be read."""
  argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)   # --flagfile expanded
  source = _config_argument(argv) or default
  if source is None:
    return None
  config = ConfigFileFlagParser(NAME).parse(source)   # as loaded, before the overrides
  if not hasattr(config, 'keys'):   # not a ConfigDict, or a file that could not be read
    return None
  for path in _override_paths(argv):
    parts = path.split('.')
    holder = config
    for depth, part in enumerate(parts):
      if not hasattr(holder, 'keys') or part not in holder:
        unknown = '.'.join(parts[:depth + 1])
        problem = f'the config {source} has no field {unknown}'
        if depth and not hasattr(holder, 'keys'):
          problem += f' ({".".join(parts[:depth])} is a value, not a group of fields)'
        close = difflib.get_close_matches(unknown, _field_paths(config), n=3)
        hint = (f'did you mean {" or ".join(close)}?' if close else
                'its fields are those the config file sets.')
        return f'--{NAME}.{path}: {problem}; {hint}'
      holder = holder[part]
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The value of the last --config in `argv` (`--config=X` or `--config X`)."""
  value = None
  for i, arg in enumerate(argv):
    if re.fullmatch(rf'--?{NAME}', arg) and i + 1 < len(argv):
      value = argv[i + 1]
    elif re.match(rf'--?{NAME}=', arg):
      value = arg.split('=', 1)[1]
  return value


def _override_paths(argv: list[str]) -> list[str]:
  """PATH of every `--config.PATH[=VALUE]` (and `--noconfig.PATH`, as ml_collections reads it)."""
  return [m.group(1) for arg in argv if (m := re.match(rf'--?(?:no)?{NAME}\.([^=]+)', arg))]


def _field_paths(config, prefix: str = '') -> list[str]:
  """Every field of `config` as a dotted path: the groups of fields and the fields in them."""
  paths = []
  for key, value in config.items():
    paths.append(prefix + key)
    if hasattr(value, 'items'):
      paths += _field_paths(value, f'{prefix}{key}.')
  return paths
