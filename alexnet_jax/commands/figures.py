"""The paper's figures from a trained workdir, as PNG files and in its TensorBoard.

  python -m alexnet_jax.commands.figures --config=configs/alexnet.py --workdir=/ckpt --out=/ckpt/figures

- conv1_kernels.png (figure 3): conv1's kernels as a grid of colour patches;
  for the two-tower model, the first tower's kernels fill the top rows.
- top5.png (figure 4, left): validation images with their five most probable
  classes as bars, the true class's bar in red.
- neighbours.png (figure 4, right): for a few validation images, the training
  images whose last hidden layer (fc7's 4096 activations) is nearest in
  euclidean distance.

Class names come from the dataset (TFDS label names, folder names).
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags
from etils import epath

from alexnet_jax import command_line, data, errors, train
from alexnet_jax.data import augment
from alexnet_jax.loop import summaries
from alexnet_jax.parallel import distributed, placement
from alexnet_jax.workdir import color_stats, trained

matplotlib.use('Agg')   # files only, no display
from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)

def kernel_grid(kernel: np.ndarray, columns: int) -> np.ndarray:
  """conv1's kernel [k, k, 3, n] as one RGB image of n patches, each scaled to [0, 1]."""
  k, _, _, n = kernel.shape
  rows = -(-n // columns)
  grid = np.ones(((k + 1) * rows + 1, (k + 1) * columns + 1, 3), np.float32)
  for i in range(n):
    patch = kernel[..., i]
    patch = (patch - patch.min()) / max(float(patch.max() - patch.min()), 1e-12)
    r, c = divmod(i, columns)
    grid[1 + r * (k + 1):1 + r * (k + 1) + k, 1 + c * (k + 1):1 + c * (k + 1) + k] = patch
  return grid


def nearest(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
  """Indices into `pool` of the k rows nearest each query row, nearest first."""
  distances = ((queries[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
  return np.argsort(distances, axis=1, kind='stable')[:, :k]


def _forward(model, aug: augment.Augmentation):
  """A compiled (params, stored uint8 images [n, S, S, 3]) -> (fc7's activations after its
  ReLU, the softmax), of the centre patch of each."""

  @jax.jit
  def forward(params, images):
    x = augment.eval_images(aug, images, ten_patches=False)
    logits, state = model.apply({'params': params}, x, train=False,
                                capture_intermediates=lambda m, _: m.name == 'fc7')
    return jax.nn.relu(state['intermediates']['fc7']['__call__'][0]), jax.nn.softmax(logits)

  return lambda params, images: tuple(np.asarray(a, np.float32)
                                      for a in forward(params, jnp.asarray(images)))


def _take(batches, n: int):
  """The first n images and labels of training batches."""
  images, labels = [], []
  for batch in batches:
    images.append(batch.image)
    labels.append(batch.label)
    if sum(len(x) for x in labels) >= n:
      break
  return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def _one_per_class(batches, n: int):
  """n validation images of as many different classes as one pass finds (folders come
  sorted by class, so the first n images would all be of one)."""
  firsts, rest = {}, []
  for batch in batches:
    for image, label, mask in zip(batch.image, batch.label, batch.mask):
      if mask == 0:
        continue
      if int(label) in firsts:
        rest.append((image, int(label)))
      else:
        firsts[int(label)] = (image, int(label))
    if len(firsts) >= n:
      break
  picked = (list(firsts.values()) + rest)[:n]
  return np.stack([image for image, _ in picked]), np.asarray([label for _, label in picked])


def _canvas(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def make_figures(config, workdir: str, which: str, out: str, num_images: int,
                 pool_size: int) -> dict[str, str]:
  """Writes the three PNG files to `out` and their images to TensorBoard; {name: path}."""
  distributed.one_host_only('python -m alexnet_jax.commands.figures')
  mesh = placement.make_mesh()
  aug = color_stats.augmentation(config, workdir)
  dataset = data.create(config, config.global_batch_size)
  model = train.create_model(config, dataset.num_classes)
  template = train.create_train_state(config, model, mesh)
  params, step = trained.restore_params(workdir, which, template)
  params = jax.device_get(params)
  names = list(dataset.class_names) or [f'class {i}' for i in range(dataset.num_classes)]
  forward = _forward(model, aug)
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  figures = {}

  kernel = np.asarray(params['conv1']['kernel'], np.float32)
  fig = plt.figure(figsize=(8, 8 * kernel.shape[-1] / 12 / 12 + 0.6))
  plt.imshow(kernel_grid(kernel, columns=12), interpolation='nearest')
  plt.axis('off')
  plt.title(f'conv1: {kernel.shape[-1]} kernels of {kernel.shape[0]}x{kernel.shape[1]}x3')
  figures['conv1_kernels'] = fig

  val_images, val_labels = _one_per_class(dataset.eval_batches(), num_images)
  val_features, val_probs = forward(params, val_images)
  fig, axes = plt.subplots(2, len(val_images), figsize=(2.2 * len(val_images), 4.6),
                           squeeze=False)
  for i, (image, label, probs) in enumerate(zip(val_images, val_labels, val_probs)):
    axes[0, i].imshow(image)
    axes[0, i].set_title(names[label][:18], fontsize=8)
    axes[0, i].axis('off')
    top = np.argsort(-probs)[:5]
    axes[1, i].barh(range(5), probs[top][::-1],
                    color=['red' if c == label else 'tab:blue' for c in top[::-1]])
    axes[1, i].set_yticks(range(5), [names[c][:14] for c in top[::-1]], fontsize=7)
    axes[1, i].set_xlim(0, 1)
    axes[1, i].tick_params(axis='x', labelsize=6)
  fig.tight_layout()
  figures['top5'] = fig

  pool_images, _ = _take(dataset.train_batches(0), pool_size)
  pool_features = np.concatenate([
      forward(params, pool_images[i:i + 256])[0]
      for i in range(0, len(pool_images), 256)])
  neighbours = nearest(val_features, pool_features, k=6)
  fig, axes = plt.subplots(len(val_images), 7, figsize=(9, 1.35 * len(val_images)),
                           squeeze=False)
  for i, row in enumerate(neighbours):
    for j, image in enumerate([val_images[i]] + [pool_images[n] for n in row]):
      axes[i, j].imshow(image)
      axes[i, j].axis('off')
  axes[0, 0].set_title('query', fontsize=8)
  axes[0, 1].set_title('nearest training images by fc7', fontsize=8, loc='left')
  fig.tight_layout()
  figures['neighbours'] = fig

  paths = {}
  writer = summaries.Summaries(workdir)
  for name, fig in figures.items():
    paths[name] = str(epath.Path(out) / f'{name}.png')
    with epath.Path(paths[name]).open('wb') as f:   # a local path or gs://...
      fig.savefig(f, format='png', dpi=100)
    writer.write_images(step, {f'figures/{name}': _canvas(fig)})
    plt.close(fig)
  writer.close()
  return paths


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  try:
    paths = make_figures(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint,
                         FLAGS.out or str(epath.Path(FLAGS.workdir) / 'figures'), FLAGS.images,
                         FLAGS.neighbour_pool)
  except errors.UserFacingError as e:
    sys.exit(f'error: {e}')
  for path in paths.values():
    print(path)


if __name__ == '__main__':
  # Flags only when run as a command, so that other modules and tests can import it.
  command_line.define_config_flag('The config the workdir was trained with.')
  flags.DEFINE_string('workdir', None, 'The trained workdir.')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best', or a step.")
  flags.DEFINE_string('out', None, 'Folder for the PNG files; default WORKDIR/figures.')
  flags.DEFINE_integer('images', 8, 'Validation images in figure 4.')
  flags.DEFINE_integer('neighbour_pool', 2048, 'Training images searched for neighbours.')
  flags.mark_flags_as_required(['config', 'workdir'])
  command_line.run(main)
