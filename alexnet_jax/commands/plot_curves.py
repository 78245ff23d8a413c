"""Training curves of a workdir as a PNG: `python -m alexnet_jax.commands.plot_curves WORKDIR OUT.png`.

Reads the scalars the trainer wrote to TensorBoard event files in WORKDIR and
plots, against epochs, the training and validation loss (left) and the
validation top-1 and top-5 error (right). Where the plateau rule divided the
learning rate, a dashed line marks the evaluation after which it did.
"""

import sys

import matplotlib
import numpy as np
from etils import epath

matplotlib.use('Agg')   # files only, no display
from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)

from alexnet_jax import optim
from alexnet_jax.loop import summaries
from alexnet_jax.workdir import model_record  # noqa: E402


def rate_drops(scalars: dict, config) -> list[tuple[int, float]]:
  """(step, new rate) of each evaluation after which the plateau rule divided the learning
  rate: the rule replayed over the validation errors with the run's own settings (`config`,
  from WORKDIR/model.json; none under the cosine schedule or without a config)."""
  if config is None or config.get('lr_schedule', 'plateau') != 'plateau':
    return []
  controller = optim.PlateauController(config.learning_rate, **config.plateau)
  return [(step, controller.learning_rate) for step, error in scalars.get('eval/top1_error', [])
          if controller.update(error)]


def plot(workdir: str, out_path: str) -> None:
  scalars = summaries.read_scalars(workdir)
  if 'train/epoch' not in scalars or 'eval/top1_error' not in scalars:
    raise SystemExit(f'{workdir} has no training and evaluation summaries to plot.')
  # Steps to epochs, from the epochs logged with the training metrics.
  steps, epochs = zip(*scalars['train/epoch'])
  to_epoch = lambda s: np.interp(s, (0,) + steps, (0.0,) + epochs)  # noqa: E731

  def series(tag):
    points = scalars.get(tag, [])
    return [to_epoch(s) for s, _ in points], [v for _, v in points]

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  left.plot(*series('train/loss'), label='train loss')
  left.plot(*series('eval/loss'), 'o-', label='validation loss')
  left.set_xlabel('epoch')
  left.set_ylabel('cross-entropy')
  left.legend()
  right.plot(*series('eval/top1_error'), 'o-', label='validation top-1 error')
  right.plot(*series('eval/top5_error'), 'o-', label='validation top-5 error')
  right.set_xlabel('epoch')
  right.set_ylabel('error')
  right.set_ylim(0, 1)
  right.grid(alpha=0.3)
  right.legend()
  record = model_record.read(workdir)
  for step, rate in rate_drops(scalars, record.config if record else None):
    for axes in (left, right):
      axes.axvline(to_epoch(step), color='grey', linestyle='--', linewidth=1)
    right.annotate(f'rate {rate:g}', (to_epoch(step), 0.97), rotation=90, fontsize=8,
                   ha='right', va='top', color='grey')
  fig.suptitle(epath.Path(workdir).name)
  fig.tight_layout()
  with epath.Path(out_path).open('wb') as f:   # a local path or gs://...
    fig.savefig(f, format='png', dpi=100)


if __name__ == '__main__':
  if len(sys.argv) != 3:
    raise SystemExit(__doc__.splitlines()[0])
  plot(sys.argv[1], sys.argv[2])
