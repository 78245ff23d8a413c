"""Evaluate trained workdirs without training, alone and as an ensemble.

  python -m alexnet_jax.commands.evaluate_workdirs --config=configs/alexnet.py \
      --workdirs=/ckpt/a,/ckpt/b --checkpoint=best --config.eval_ten_crop=true

Each workdir's checkpoint (`latest`, `best`, or a step number) is restored with
the config it was trained with; each model's top-1 and top-5 error over the
whole eval split is printed, and with several workdirs the error of their
ensemble, whose softmax is the average of the members' (the paper's
five-network result). `--config.eval_ten_crop=true` uses the paper's ten
patches per image. Nothing in the workdirs is changed.
"""

import sys

import jax
from absl import flags, logging

import numpy as np

from alexnet_jax import command_line, config_checks, data, errors, train
from alexnet_jax.data import to_devices
from alexnet_jax.loop import evaluate
from alexnet_jax.parallel import distributed, placement, steps
from alexnet_jax.workdir import color_stats, trained


def evaluate_workdirs(config, workdirs: list[str], which: str) -> dict:
  """{workdir or 'ensemble': metrics}; the ensemble only with several workdirs."""
  distributed.one_host_only('python -m alexnet_jax.commands.evaluate_workdirs')
  config_checks.check(config, jax.device_count(), jax.local_device_count())
  mesh = placement.make_mesh(model_axis_size=config.model_axis_size)
  # The mean each workdir was trained with (its own, with color_stats=computed).
  augs = [color_stats.augmentation(config, workdir) for workdir in workdirs]
  if any(not np.array_equal(a.mean, augs[0].mean) for a in augs):
    raise errors.ConfigError('These workdirs were trained with different means '
                             '(color_stats=computed): evaluate them one at a time.')
  dataset = data.create(config, config.global_batch_size)
  config_checks.check_classes(config, dataset.num_classes)
  model = train.create_model(config, dataset.num_classes)
  put = to_devices.for_config(config, mesh, placement.batch_spec(model, mesh), dataset.jpeg_store)
  template = train.create_train_state(config, model, mesh)
  eval_step = steps.make_eval_step(model, augs[0], mesh, config.eval_ten_crop)
  members, results = [], {}
  for workdir in workdirs:
    params, step = trained.restore_params(workdir, which, template)
    members.append(params)
    results[workdir] = {**evaluate.evaluate(eval_step, [params], dataset, put),
                        'step': step}
    logging.info('%s (step %d): %s', workdir, step, results[workdir])
  if len(members) > 1:
    results['ensemble'] = evaluate.evaluate(eval_step, members, dataset, put)
  return results


def main(argv):
  del argv
  config = flags.FLAGS.config
  patches = 'ten patches' if config.eval_ten_crop else 'the centre patch'
  try:
    results = evaluate_workdirs(config, flags.FLAGS.workdirs, flags.FLAGS.checkpoint)
  except errors.UserFacingError as e:
    sys.exit(f'error: {e}')
  print(f'{config.dataset}:{config.eval_split}, {patches} per image')
  print('| model | step | top-1 error | top-5 error | images |')
  print('|---|---|---|---|---|')
  for name, m in results.items():
    print(f'| {name} | {m.get("step", "-")} | {m["top1_error"]:.4f} | {m["top5_error"]:.4f} '
          f'| {int(m["examples"])} |')


if __name__ == '__main__':
  # Flags only when run as a command, so that other modules and tests can import it.
  command_line.define_config_flag('The config the workdirs were trained with.')
  flags.DEFINE_list('workdirs', None, 'Trained workdirs, comma-separated.')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' (lowest validation error), "
                      'or a step.')
  flags.mark_flags_as_required(['config', 'workdirs'])
  command_line.run(main)
