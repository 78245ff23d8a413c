"""The paper's claims for its choices, measured: each choice undone, against the paper's net.

  python -m alexnet_jax.commands.claims --out=/tmp/claims [--seeds=0,1] [--rows=no_lrn,...]

trains the paper's net once for each of --seeds, and once (with the first seed) for each row of
ROWS, each the same config with one of the paper's choices undone, one after another in
OUT/ROW (a finished run is not trained again, a stopped one resumes). Each is then evaluated
on its training split too (centre patch, no dropout), and a Markdown table is printed and
written to OUT/claims.md: each row's validation error, its difference from the paper's net
(the mean over the seeds), whether that difference exceeds the seeds' spread, and the gap
between training and validation error. The config (default `configs/alexnet.py:claims`, the
Imagenette net of the README's table) takes any `--config.FIELD` as main.py does.
"""

import dataclasses
import json
import sys

from absl import flags, logging
from etils import epath

from alexnet_jax import command_line, errors, train
from alexnet_jax.commands import evaluate_workdirs
from alexnet_jax.loop import summaries


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  what: str
  overrides: dict
  paper: str   # the paper's effect of undoing the choice (section 3 and 4)


ROWS = (
    Row('no_lrn', 'without response normalisation (`lrn=false`)', {'lrn': False},
        'top-1 +1.4, top-5 +1.2'),
    Row('non_overlapping_pools', '2x2 pools, stride 2 (`pooling=non_overlapping`)',
        {'pooling': 'non_overlapping'}, 'top-1 +0.4, top-5 +0.3'),
    Row('one_tower', 'one tower, half the kernels (`model=paper_one_tower`)',
        {'model': 'paper_one_tower'}, 'top-1 +1.7, top-5 +1.2'),
    Row('no_colour_shift', 'without the PCA colour shift (`pca_lighting_std=0`)',
        {'pca_lighting_std': 0.0}, 'top-1 over +1'),
    Row('no_dropout', 'without dropout (`dropout_rate=0`)', {'dropout_rate': 0.0},
        '"substantial overfitting"'),
    Row('no_patches_or_reflections',
        'the centre patch, unreflected (`random_patches=false reflections=false`)',
        {'random_patches': False, 'reflections': False}, '"substantial overfitting"'),
)


def _config_for(config, overrides: dict):
  row = config.copy_and_resolve_references()
  with row.unlocked():
    row.update(overrides)
  return row


def _measured(config, workdir: str) -> dict:
  """Trains `workdir` to its end (a finished run only resumes at it), then its last
  validation errors and its errors on its training split, in percent."""
  train.train_and_evaluate(config, workdir)
  scalars = summaries.read_scalars(workdir)
  on_train = _config_for(config, {'eval_split': config.train_split})
  metrics = evaluate_workdirs.evaluate_workdirs(on_train, [workdir], 'latest')[workdir]
  return {'top1': 100 * scalars['eval/top1_error'][-1][1],
          'top5': 100 * scalars['eval/top5_error'][-1][1],
          'train_top1': 100 * metrics['top1_error']}


def measure(config, out: str, seeds: list[int], rows: tuple[Row, ...] = ROWS) -> dict:
  """{run name: its errors}: the paper's net for each seed, each row with the first."""
  results = {}
  for seed in seeds:
    results[f'baseline_seed{seed}'] = _measured(_config_for(config, {'seed': seed}),
                                                f'{out}/baseline_seed{seed}')
  for row in rows:
    results[row.name] = _measured(_config_for(config, {**row.overrides, 'seed': seeds[0]}),
                                  f'{out}/{row.name}')
  return results


def table(results: dict, seeds: list[int], rows: tuple[Row, ...] = ROWS) -> str:
  baselines = [results[f'baseline_seed{s}'] for s in seeds]
  mean = {k: sum(b[k] for b in baselines) / len(baselines) for k in ('top1', 'top5')}
  spread = {k: max(b[k] for b in baselines) - min(b[k] for b in baselines)
            for k in ('top1', 'top5')}
  lines = ['| run | the paper: undoing it changes the error by | validation top-1 / top-5 '
           'error (%) | here: change in top-1 / top-5 (points) | beyond the seeds\' spread? '
           '| training top-1 error (%), gap to validation |', '|---|---|---|---|---|---|']
  for seed, b in zip(seeds, baselines):
    lines.append(f'| the paper\'s net, seed {seed} | | {b["top1"]:.1f} / {b["top5"]:.1f} | | '
                 f'| {b["train_top1"]:.1f}, {b["top1"] - b["train_top1"]:.1f} |')
  for row in rows:
    r = results[row.name]
    change = {k: r[k] - mean[k] for k in ('top1', 'top5')}
    beyond = ' / '.join('yes' if abs(change[k]) > spread[k] else 'no' for k in ('top1', 'top5'))
    lines.append(f'| {row.what} | {row.paper} | {r["top1"]:.1f} / {r["top5"]:.1f} | '
                 f'{change["top1"]:+.1f} / {change["top5"]:+.1f} | {beyond} | '
                 f'{r["train_top1"]:.1f}, {r["top1"] - r["train_top1"]:.1f} |')
  lines.append(f'\nThe seeds\' spread (the paper\'s net, seeds {", ".join(map(str, seeds))}): '
               f'{spread["top1"]:.1f} points of top-1, {spread["top5"]:.1f} of top-5.')
  return '\n'.join(lines)


def main(argv):
  del argv
  seeds = [int(s) for s in flags.FLAGS.seeds]
  names = flags.FLAGS.rows or [row.name for row in ROWS]
  unknown = sorted(set(names) - {row.name for row in ROWS})
  if len(seeds) < 2:
    sys.exit(f'error: --seeds needs two seeds or more (their spread is the noise), got {seeds}.')
  if unknown:
    sys.exit(f'error: unknown --rows {unknown}: choose from {[row.name for row in ROWS]}.')
  rows = tuple(row for row in ROWS if row.name in names)
  try:
    results = measure(flags.FLAGS.config, flags.FLAGS.out, seeds, rows)
  except errors.UserFacingError as e:
    sys.exit(f'error: {e}')
  text = table(results, seeds, rows)
  out = epath.Path(flags.FLAGS.out)
  (out / 'claims.md').write_text(text + '\n')
  (out / 'claims.json').write_text(json.dumps(results, indent=1) + '\n')
  logging.info('Written to %s and claims.json.', out / 'claims.md')
  print(text)


if __name__ == '__main__':
  command_line.define_config_flag('The config of the paper\'s net.', 'configs/alexnet.py:claims')
  flags.DEFINE_string('out', None, 'The folder of the runs and the table.', required=True)
  flags.DEFINE_list('seeds', ['0', '1'], 'The paper\'s net is trained with each.')
  flags.DEFINE_list('rows', None, 'Some rows only (default all): '
                    + ', '.join(row.name for row in ROWS))
  command_line.run(main)
