"""Top-1 and top-5 error over a whole validation split."""

import jax
import numpy as np

from alexnet_jax import parallel


def evaluate(eval_step, params_list, data, mesh, batch_spec) -> dict:
  """Runs `eval_step` over every eval batch with one model's parameters (a list of one) or an
  ensemble's; padded examples (mask 0) count nowhere. `batch_spec`: as the step takes batches
  (`parallel.batch_spec`)."""
  totals = None
  for batch in parallel.prefetch_to_mesh(data.eval_batches(), mesh, batch_spec):
    counts = eval_step(list(params_list), batch)
    totals = counts if totals is None else jax.tree.map(lambda a, b: a + b, totals, counts)
  totals = {k: float(np.asarray(v)) for k, v in jax.device_get(totals).items()}
  count = totals['count']
  return {
      'loss': totals['loss_sum'] / count,
      'top1_error': 1.0 - totals['top1_correct'] / count,
      'top5_error': 1.0 - totals['top5_correct'] / count,
      'examples': count,
  }
