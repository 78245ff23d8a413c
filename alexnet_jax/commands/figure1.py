"""Figure 1 of the paper, measured: ReLUs against tanh units in a four-layer net.

  python -m alexnet_jax.commands.figure1 --dataset=imagenette_32 --out=docs/figure1

trains `claims/four_layer_net.py` with ReLUs and with tanh units, each at the best rate of a
short sweep (`claims/figure1.py`), on the training split of a store prepared at 32x32
(`python -m alexnet_jax.commands.prepare --source=image_folder:ROOT --size=32`) or a folder
(`image_folder:ROOT`, its images resized to 32x32 as they are read). It writes OUT/figure1.png
(training error rate against epochs, the 25% line dashed) and OUT/figure1.json (every curve of
the sweep, the rates chosen, the settings), and prints as its last line the epoch at which each
net reached 25% training error and their ratio.
"""

import dataclasses
import json
import pathlib
import sys

import matplotlib
import numpy as np
from absl import app, flags

matplotlib.use('Agg')   # files only, no display
from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)

from alexnet_jax import data, errors  # noqa: E402
from alexnet_jax.claims import figure1  # noqa: E402
from configs import alexnet  # noqa: E402


def read_training_images(dataset: str, data_dir: str | None, size: int, examples: int = 0):
  """(uint8 [N, size, size, 3], int32 [N], the class count) of the training split."""
  config = alexnet.get_config()
  config.dataset, config.data_dir, config.resize_size = dataset, data_dir, size
  train, _, num_classes, _ = data.open_splits(config)
  stop = train.stop if examples <= 0 else min(train.stop, train.start + examples)
  images = np.empty((stop - train.start, size, size, 3), np.uint8)
  labels = np.array([train.source.read_into(index, images[i])
                     for i, index in enumerate(range(train.start, stop))], np.int32)
  return images, labels, num_classes


def plot(result: figure1.Result, threshold: float, path: pathlib.Path) -> None:
  figure, axes = plt.subplots(figsize=(6, 4.5))
  for name, style in (('relu', '-'), ('tanh', '--')):
    curve = result.curves[name]
    axes.plot(range(1, len(curve) + 1), curve, style, color='black',
              label=f'{"ReLU" if name == "relu" else "tanh"} (rate {result.chosen[name]:g})')
  axes.axhline(threshold, color='grey', linestyle=':', linewidth=1)
  axes.set(xlabel='Epochs', ylabel='Training error rate', ylim=(0, 1))
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  settings = figure1.Settings(epochs=FLAGS.epochs, sweep_epochs=FLAGS.sweep_epochs,
                              rates=tuple(float(r) for r in FLAGS.rates), seed=FLAGS.seed)
  if not 1 <= settings.sweep_epochs <= settings.epochs:
    raise app.UsageError(f'--sweep_epochs={settings.sweep_epochs} must be from 1 to '
                         f'--epochs={settings.epochs}.')
  try:
    images, labels, num_classes = read_training_images(FLAGS.dataset, FLAGS.data_dir,
                                                       FLAGS.size, FLAGS.examples)
  except errors.UserFacingError as e:
    sys.exit(f'error: {e}')
  print(f'{len(labels)} training images of {FLAGS.size}x{FLAGS.size}, {num_classes} classes.',
        flush=True)
  result = figure1.run(images, labels, num_classes, settings,
                       log=lambda line: print(line, flush=True))
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  plot(result, settings.threshold, out / 'figure1.png')
  record = {'dataset': FLAGS.dataset, 'examples': len(labels), 'size': FLAGS.size,
            'settings': dataclasses.asdict(settings),
            'chosen': result.chosen, 'curves': result.curves,
            'sweep': {name: {str(r): e for r, e in runs.items()}
                      for name, runs in result.sweep.items()},
            'epochs_to_threshold': result.epochs_to(settings.threshold),
            'seconds': round(result.seconds)}
  (out / 'figure1.json').write_text(json.dumps(record, indent=1) + '\n')
  print(f'{out / "figure1.png"} and figure1.json written ({result.seconds / 60:.1f} minutes).')
  print(figure1.summary(result, settings.threshold))


if __name__ == '__main__':
  # Flags only when run as a command, so that tests can import it.
  flags.DEFINE_string('dataset', None, 'A store prepared at 32x32 (a name in --data_dir, or a '
                      'path) or image_folder:ROOT.', required=True)
  flags.DEFINE_string('data_dir', None, 'Where named stores are (default '
                      f'{data.DEFAULT_DATA_DIR}).')
  flags.DEFINE_string('out', None, 'The folder the figure and its numbers go to.',
                      required=True)
  flags.DEFINE_integer('size', 32, 'The side of the images, as stored or resized to.')
  flags.DEFINE_integer('seed', 0, 'Initial parameters and every epoch\'s order.')
  flags.DEFINE_integer('epochs', figure1.Settings.epochs, 'Epochs of each net.')
  flags.DEFINE_integer('sweep_epochs', figure1.Settings.sweep_epochs,
                       'Epochs each rate of the sweep trains before one is chosen.')
  flags.DEFINE_list('rates', [str(r) for r in figure1.Settings.rates],
                    'The learning rates of the sweep.')
  flags.DEFINE_integer('examples', 0, 'Train on the first N images only (0: all); for a quick '
                       'check.')
  app.run(main)
