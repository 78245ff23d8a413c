"""What a checkpoint costs: how long the step waits for a save, how long the save takes to
be written, a restore, and bytes on disk.

  python -m alexnet_jax.commands.benchmark_checkpoint --models=paper,owt --saves=3 --dir=/tmp/ckpt \
      --batch=128

For each model (1000 classes) it saves the trainer's state (`checkpointing.Checkpoints`,
as the loop does: parameters, momentum, step) `--saves` times. Saves are asynchronous: the
step waits while the arrays are copied off the devices (`step waits`), then Orbax writes
them in the background (`written after`, from the same start). It restores the last one
and measures its size on disk. With `--batch`, it also times the trainer's step at that
global batch (`steps.make_train_step`) and gives the wait as a share of one step and
of the steps between two saves (`--every`, the default `checkpoint_every_steps`).
"""

import argparse
import pathlib
import shutil
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, optim
from alexnet_jax.data import augment
from alexnet_jax.parallel import placement, steps
from alexnet_jax.workdir import checkpointing


def _du(path) -> int:
  """Bytes on disk under `path`."""
  out = subprocess.run(['du', '-s', '-B1', str(path)], check=True, capture_output=True,
                       text=True).stdout
  return int(out.split()[0])


def measure(variant: str, saves: int, directory: pathlib.Path, batch: int) -> dict:
  mesh = placement.make_mesh(jax.local_devices())
  model = models.AlexNet(num_classes=1000, variant=variant, dtype=jnp.float32)
  state = placement.init_train_state(model, optim.paper_sgd(0.01), 224, 0, mesh)
  # A trained run's momentum is noise to a compressor; a fresh state's is zeros, which
  # Orbax's zstd would shrink to nothing.
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state.opt_state))))
  state = state.replace(opt_state=jax.tree.map(
      lambda x: jax.device_put(0.01 * jax.random.normal(next(keys), x.shape, x.dtype), x.sharding)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state))
  root = directory / variant
  shutil.rmtree(root, ignore_errors=True)
  checkpoints = checkpointing.Checkpoints(str(checkpointing.folder(str(root))), keep=saves)
  waits, written = [], []
  for step in range(1, saves + 1):
    state = state.replace(step=jax.device_put(jnp.int32(step), state.step.sharding))
    jax.block_until_ready(state)
    start = time.perf_counter()
    checkpoints.save(state, {'step': step})
    waits.append(time.perf_counter() - start)
    checkpoints.wait()
    written.append(time.perf_counter() - start)
  start = time.perf_counter()
  checkpoints.restore(state)
  restore_s = time.perf_counter() - start
  checkpoints.close()
  result = {
      'parameters': models.count_params(state.params),
      'state_bytes': checkpointing.checkpoint_bytes(state),
      'on_disk': _du(pathlib.Path(checkpointing.folder(str(root)), str(saves))),
      'wait_s': statistics.median(waits),
      'written_s': statistics.median(written),
      'restore_s': restore_s,
  }
  if batch:
    step_fn = steps.make_train_step(model, augment.imagenet(224), 0, mesh)
    images = placement.shard_batch({
        'image': np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), np.uint8),
        'label': np.zeros((batch,), np.int32)}, mesh, placement.batch_spec(model, mesh))
    state, _ = step_fn(state, images)   # compiles
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(2):
      state, metrics = step_fn(state, images)
    jax.block_until_ready((state, metrics))
    result['step_s'] = (time.perf_counter() - start) / 2
  return result


def main(args):
  directory = pathlib.Path(args.dir)
  print(f'jax {jax.__version__}, {jax.local_device_count()} x '
        f'{jax.local_devices()[0].device_kind}; checkpoints in {directory}', flush=True)
  gib = lambda n: f'{n / 2**30:.2f}'  # noqa: E731
  print('| model | parameters | state GiB | on disk GiB | step waits, s (median) | written '
        'after, s (median) | restore s | step s | wait / one step | wait / '
        f'{args.every:,} steps |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for variant in args.models.split(','):
    r = measure(variant, args.saves, directory, args.batch)
    step, wait = r.get('step_s'), r['wait_s']
    shares = (f'{wait / step:.1%} | {wait / (step * args.every):.3%}' if step else '- | -')
    print(f'| {variant} | {r["parameters"]:,} | {gib(r["state_bytes"])} | {gib(r["on_disk"])} | '
          f'{wait:.3f} | {r["written_s"]:.2f} | {r["restore_s"]:.2f} | '
          f'{f"{step:.3f}" if step else "-"} | {shares} |', flush=True)


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='paper,owt')
  parser.add_argument('--saves', type=int, default=3, help='timed saves; the median is shown')
  parser.add_argument('--dir', default='/tmp/alexnet_benchmark_checkpoint')
  parser.add_argument('--batch', type=int, default=0,
                      help='also time the train step at this global batch (0: no)')
  parser.add_argument('--every', type=int, default=1000, help='steps between two saves')
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
