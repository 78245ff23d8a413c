"""torchvision's AlexNet weights in and out of a workdir.

  python -m alexnet_jax.commands.weights import --from=alexnet-owt-7be5be79.pth --workdir=/ckpt/torchvision
  python -m alexnet_jax.commands.weights export --workdir=/ckpt/run --to=/tmp/alexnet.pth [--checkpoint=best]

`import` reads a state dict of torchvision's AlexNet (the file its weights URL serves, or
any `torch.save(model.state_dict(), ...)` of that layout; no PyTorch needed) and writes it
as the `owt` checkpoint of step 0 in a new workdir, with WORKDIR/model.json: the config
(`configs/alexnet.py:torchvision`, torchvision's input normalisation) and, for 1000
classes, ImageNet's classes. `evaluate_workdirs`, `figures`, `classify`, training
(`--config.init_from`, or resuming the workdir itself) then read it.

`export` writes a checkpoint of an `owt` workdir as a file that
`torchvision.models.alexnet().load_state_dict(torch.load(FILE))` accepts (for a model of
full width, 1000 classes and 224x224 patches; other widths and class counts keep the
layout, for an AlexNet of those sizes).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath
from flax.training import train_state

from alexnet_jax import command_line, models, optim, train
from alexnet_jax.errors import ConfigError, UserFacingError
from alexnet_jax.interop import class_names, torch_file, torch_save, torchvision_layout
from alexnet_jax.loop import saved_state
from alexnet_jax.parallel import distributed
from alexnet_jax.workdir import checkpointing, model_record, orbax_logs, storage, trained

IMPORTED_STEP = 0
# What torchvision's AlexNet computes, of the paper's choices (`models.choices_of`).
_TORCHVISION_CHOICES = {'activation': 'relu', 'lrn': False, 'pooling': 'overlapping'}


def import_weights(source: str, workdir: str, config) -> dict:
  """Writes the state dict in `source` as the checkpoint of step 0 in `workdir`; returns
  what was imported. Everything is read and checked before anything is written."""
  distributed.one_host_only('python -m alexnet_jax.commands.weights import')
  root = storage.workdir_path(workdir)
  for folder in (checkpointing.folder(workdir), root / checkpointing.LEGACY_BEST_FOLDER):
    if folder.is_dir() and any(folder.iterdir()):
      raise ConfigError(f'{folder} already holds checkpoints: import into a new '
                        '--workdir (nothing was changed).')
  # The layout is checked from the file's shapes, before any tensor is read.
  state_dict = torch_file.read_state_dict(
      source, check_shapes=lambda shapes: torchvision_layout.check_shapes(shapes, source))
  params, width, num_classes = torchvision_layout.from_torchvision(state_dict, source)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model, config.width = 'owt', width
  names = class_names.imagenet_wnids() if num_classes == class_names.IMAGENET_CLASSES else []
  model = train.create_model(config, num_classes)
  # The state train.create_train_state makes, built from these parameters: nothing random to
  # initialise (and compile) for the full network only to be replaced.
  tx = optim.paper_sgd(config.learning_rate, config.momentum, config.weight_decay)
  state = train_state.TrainState.create(apply_fn=model.apply, tx=tx,
                                        params=jax.tree.map(jnp.asarray, params))
  state = state.replace(step=jnp.zeros((), jnp.int32))
  plateau = optim.PlateauController(config.learning_rate, **config.plateau)
  checkpoints = checkpointing.Checkpoints(str(checkpointing.folder(workdir)),
                                           keep=config.keep_checkpoints)
  try:
    checkpoints.save(state, {'plateau': plateau.state_dict(), 'best_top1_error': None,
                             'pending_eval': False, 'choices': saved_state.choices(config)})
  finally:
    checkpoints.close()
  model_record.write(str(root), config, names, source=str(source))
  return {'width': width, 'classes': num_classes,
          'checkpoint': checkpoints.path(IMPORTED_STEP)}


def export_weights(workdir: str, target: str, which: str, config=None) -> dict:
  """Writes checkpoint `which` of an `owt` workdir to `target` in torchvision's layout."""
  distributed.one_host_only('python -m alexnet_jax.commands.weights export')
  if config is None:
    record = model_record.read(workdir)
    if record is None:
      raise ConfigError(f'{workdir} has no {model_record.FILENAME} (a workdir trained before '
                        'it was written): pass the config it was trained with, '
                        '--config=configs/alexnet.py:owt and the overrides it used.')
    config = record.config
  if config.model != 'owt':
    raise ConfigError(f"{workdir} holds a {config.model!r} AlexNet; only 'owt' has "
                      "torchvision's layout (the paper's two towers and LRN have no "
                      'torchvision counterpart).')
  choices = models.choices_of(config)
  unlike = {k: v for k, v in choices.items() if v != _TORCHVISION_CHOICES[k]}
  if unlike:
    raise ConfigError(
        f'{workdir} holds an owt AlexNet with {", ".join(f"{k}={v!r}" for k, v in unlike.items())}'
        ": torchvision's AlexNet has ReLUs, no LRN and overlapping pools, so its weights "
        'there would compute another function.')
  params, step = trained.restore_saved_params(workdir, which)
  try:
    state_dict = torchvision_layout.to_torchvision(params)
  except torchvision_layout.LayoutError as e:
    raise torchvision_layout.LayoutError(f'{workdir} cannot be exported: {e}') from e
  epath.Path(target).parent.mkdir(parents=True, exist_ok=True)
  torch_save.write_state_dict(target, state_dict)
  return {'step': step, 'classes': int(params['fc8']['bias'].shape[0]),
          'parameters': int(sum(np.size(v) for v in state_dict.values()))}


def main(argv):
  FLAGS = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('import', 'export'):
    sys.exit('usage: python -m alexnet_jax.commands.weights import --from=FILE.pth --workdir=DIR\n'
             '       python -m alexnet_jax.commands.weights export --workdir=DIR --to=FILE.pth '
             '[--checkpoint=latest|best|STEP]')
  orbax_logs.keep_errors()
  try:
    if argv[1] == 'import':
      if not FLAGS['from'].value:
        raise ConfigError('--from=FILE.pth is required: the state dict to import.')
      done = import_weights(FLAGS['from'].value, FLAGS.workdir, FLAGS.config)
      print(f"Imported {FLAGS['from'].value}: owt AlexNet, width {done['width']:g}, "
            f"{done['classes']} classes, as {done['checkpoint']}.")
      print('Classify with:  python -m alexnet_jax.commands.classify --workdir='
            f'{FLAGS.workdir} IMAGE...')
      if done['width'] == 1:
        print('Evaluate with:  python -m alexnet_jax.commands.evaluate_workdirs '
              f'--config=configs/alexnet.py:torchvision --workdirs={FLAGS.workdir}')
    else:
      if not FLAGS.to:
        raise ConfigError('--to=FILE.pth is required: the file to write.')
      done = export_weights(FLAGS.workdir, FLAGS.to, FLAGS.checkpoint,
                            FLAGS.config if FLAGS['config'].present else None)
      print(f"Exported step {done['step']} of {FLAGS.workdir} ({done['parameters']:,} "
            f"parameters, {done['classes']} classes) to {FLAGS.to}.")
  except UserFacingError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  # Flags only when run as a command, so that other modules and tests can import it.
  command_line.define_config_flag(
      "import: the config recorded with the weights (its width is the file's); export: only "
      'for a workdir without model.json, the config it was trained with.',
      default='configs/alexnet.py:torchvision')
  flags.DEFINE_string('from', None, 'import: a state dict of torchvision\'s AlexNet (.pth).')
  flags.DEFINE_string('to', None, 'export: the .pth file to write.')
  flags.DEFINE_string('workdir', None, 'import: a new workdir; export: a trained owt workdir.')
  flags.DEFINE_string('checkpoint', 'latest', "export: 'latest', 'best', or a step.")
  flags.mark_flags_as_required(['workdir'])
  command_line.run(main)
