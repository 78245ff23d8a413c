"""Why a network does not learn: each layer's outputs at initialisation and after a few steps.

  python -m alexnet_jax.commands.activation_stats --config=configs/alexnet.py \
      --config.dataset=imagenette --steps=10

On one batch of the config's validation split (the centre patches), before
training and after `--steps` training steps with the config's optimiser, it
prints for conv1 to fc8 the std and mean of the layer's output (before its
ReLU), the fraction of outputs that are positive (the ReLU fires), and the
fraction of units (channels) that fire on no input of the batch: dead ones
(fc8 gives the logits, which have no ReLU: only their std and mean).
Then the loss and the gradient norm of each step.
"""

import jax
import numpy as np
import optax
from absl import flags

from alexnet_jax import command_line, data, models, train
from alexnet_jax.data import augment
from alexnet_jax.parallel import placement, steps
from alexnet_jax.workdir import color_stats



def layer_table(model, params, aug, batch) -> tuple[list[tuple], float, float]:
  """([(layer, std, mean, firing, dead units)], logits std, loss) on `batch`."""
  images = augment.eval_images(aug, batch['image'], ten_patches=False)
  logits, state = model.apply({'params': params}, images, train=False,
                              capture_intermediates=lambda m, _: m.name in models.LAYERS)
  rows = []
  for name in models.LAYERS:
    out = np.asarray(state['intermediates'][name]['__call__'][0])
    units = out.reshape(-1, out.shape[-1])
    rows.append((name, out.std(), out.mean(), (out > 0).mean(), ((units > 0).sum(0) == 0).mean()))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  return rows, float(np.asarray(logits).std()), float(loss)


def main(argv):
  del argv
  config, num_steps = flags.FLAGS.config, flags.FLAGS.steps
  mesh = placement.make_mesh(jax.local_devices()[:1])
  aug = color_stats.augmentation(config, flags.FLAGS.workdir or '')
  dataset = data.create(config, config.global_batch_size)
  model = train.create_model(config, dataset.num_classes)
  state = train.create_train_state(config, model, mesh)
  probe = next(iter(dataset.eval_batches())).arrays()
  stream = dataset.train_batches(0)
  step = steps.make_train_step(model, aug, config.seed, mesh)

  def show(title):
    rows, logits_std, loss = layer_table(model, jax.device_get(state.params), aug, probe)
    print(f'{title}: logits std {logits_std:.3g}, loss {loss:.3f}')
    print('| layer | std | mean | firing | dead units |')
    print('|---|---|---|---|---|')
    for name, std, mean, firing, dead in rows:
      relu = name != models.LAYERS[-1]
      print(f'| {name} | {std:.3g} | {mean:.3g} | ' +
            (f'{firing:.2f} | {dead:.2f} |' if relu else '- | - |'))

  show(f'{config.model}, initialization={config.initialization}, at initialisation')
  for i in range(1, num_steps + 1):
    state, metrics = step(state, placement.shard_batch(next(stream).arrays(), mesh))
    print(f'step {i}: loss {float(metrics["loss"]):.3f}, gradient norm '
          f'{float(metrics["grad_norm"]):.3g}', flush=True)
  stream.close()
  show(f'after {num_steps} steps')


if __name__ == '__main__':
  command_line.define_config_flag('The training config.')
  flags.DEFINE_integer('steps', 10, 'Training steps between the two looks.')
  flags.DEFINE_string('workdir', None, 'With --config.color_stats=computed: where they are.')
  flags.mark_flags_as_required(['config'])
  command_line.run(main)
