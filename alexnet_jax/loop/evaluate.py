"""Top-1 and top-5 error over a whole validation split."""

import jax
import numpy as np

from alexnet_jax.errors import DataError


def evaluate(eval_step, params_list, data, put, should_stop=None) -> dict | None:
  """Runs `eval_step` over every eval batch with one model's parameters (a list of one) or an
  ensemble's; padded examples (mask 0) count nowhere. `put`: a host batch onto the devices as
  the step takes it (`data.to_devices.ToDevices`), decoding where it says.

  `should_stop()`, asked after each batch, can end the pass early (a preemption): then None.
  A damaged record raises DamagedRecordError, or, with skip_damaged_records, counts nowhere
  but in 'skipped_records'.
  """
  totals, skipped = None, []
  batches = data.eval_batches(put=put, split=put.decode_split,
                              on_skip=lambda _, count: skipped.append(count))
  try:
    for batch in batches:
      counts = eval_step(list(params_list), batch)
      totals = counts if totals is None else jax.tree.map(lambda a, b: a + b, totals, counts)
      if should_stop is not None and should_stop():
        return None
  finally:
    batches.close()
  if totals is None:
    raise DataError('The evaluation read no batches: the validation split is empty.')
  totals = {k: float(np.asarray(v)) for k, v in jax.device_get(totals).items()}
  count = totals['count']
  return {
      'loss': totals['loss_sum'] / count,
      'top1_error': 1.0 - totals['top1_correct'] / count,
      'top5_error': 1.0 - totals['top5_correct'] / count,
      'examples': count,
      'skipped_records': sum(skipped),
  }
