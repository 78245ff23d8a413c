"""WORKDIR/model.json: the config a workdir was trained (or its weights imported) with, and
the names of its classes, so that commands reading the workdir need no flags to rebuild its
model and its input (`classify`, `weights export`, `--config.init_from`)."""

import dataclasses
import json

import ml_collections
from etils import epath

from alexnet_jax.workdir import storage

FILENAME = 'model.json'


@dataclasses.dataclass(frozen=True)
class Record:
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]   # by fc8 output; empty when the dataset names none
  source: str | None = None      # the file the weights were imported from


def write(workdir: str, config, class_names, source: str | None = None) -> None:
  contents = {'config': json.loads(config.to_json_best_effort()),
              'class_names': list(class_names), 'source': source}
  storage.write_whole(epath.Path(workdir) / FILENAME,
                            json.dumps(contents, indent=1).encode())


def read(workdir: str) -> Record | None:
  """The workdir's record; None for a workdir written before records were kept."""
  path = storage.workdir_path(workdir) / FILENAME
  if not path.exists():
    return None
  contents = json.loads(path.read_text())
  return Record(ml_collections.ConfigDict(contents['config']),
                tuple(contents['class_names']), contents.get('source'))
