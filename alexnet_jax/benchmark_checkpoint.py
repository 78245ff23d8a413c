"""What a checkpoint costs: seconds per save and restore, and bytes on disk.

  python -m alexnet_jax.benchmark_checkpoint --models=paper,owt --saves=3 --dir=/tmp/ckpt

For each model (1000 classes) it saves the trainer's state (`checkpointing.Checkpoints`,
as the loop does: parameters, momentum, step) `--saves` times, restores the last one,
and measures the checkpoint's size on disk. It also prices keeping `best/` apart: as its
own copy (what the trainer writes) or as hard links to a regular checkpoint's files (which
only a local disk could do), measured with `du` over both folders together.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp

from alexnet_jax import checkpointing, models, optim, parallel


def _du(*paths) -> int:
  """Bytes on disk of the paths together (a file linked twice counts once)."""
  out = subprocess.run(['du', '-s', '-B1', '-c', *map(str, paths)], check=True,
                       capture_output=True, text=True).stdout
  return int(out.strip().splitlines()[-1].split()[0])


def _linked_copy(source: pathlib.Path, target: pathlib.Path) -> None:
  for path in source.rglob('*'):
    destination = target / path.relative_to(source)
    if path.is_dir():
      destination.mkdir(parents=True, exist_ok=True)
    else:
      destination.parent.mkdir(parents=True, exist_ok=True)
      os.link(path, destination)


def measure(variant: str, saves: int, directory: pathlib.Path) -> dict:
  mesh = parallel.make_mesh(jax.local_devices())
  model = models.AlexNet(num_classes=1000, variant=variant, dtype=jnp.float32)
  state = parallel.init_train_state(model, optim.paper_sgd(0.01), 224, 0, mesh)
  # A trained run's momentum is noise to a compressor; a fresh state's is zeros, which
  # Orbax's zstd would shrink to nothing.
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state.opt_state))))
  state = state.replace(opt_state=jax.tree.map(
      lambda x: jax.device_put(0.01 * jax.random.normal(next(keys), x.shape, x.dtype), x.sharding)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state))
  root = directory / variant
  shutil.rmtree(root, ignore_errors=True)
  checkpoints = checkpointing.Checkpoints(str(root / 'checkpoints'), keep=saves)
  times = []
  for step in range(1, saves + 1):
    state = state.replace(step=jax.device_put(jnp.int32(step), state.step.sharding))
    start = time.perf_counter()
    checkpoints.save(state, {'step': step})
    times.append(time.perf_counter() - start)
  start = time.perf_counter()
  checkpoints.restore(state)
  restore_s = time.perf_counter() - start
  checkpoints.close()
  last = root / 'checkpoints' / str(saves)
  shutil.copytree(last, root / 'best_copy' / str(saves))
  _linked_copy(last, root / 'best_linked' / str(saves))
  return {
      'parameters': models.count_params(state.params),
      'state_bytes': checkpointing.checkpoint_bytes(state),
      'on_disk': _du(last),
      'save_s': statistics.median(times),
      'restore_s': restore_s,
      'with_best_copy': _du(last, root / 'best_copy'),
      'with_best_linked': _du(last, root / 'best_linked'),
  }


def main(args):
  directory = pathlib.Path(args.dir)
  print(f'jax {jax.__version__}, {jax.local_device_count()} x '
        f'{jax.local_devices()[0].device_kind}; checkpoints in {directory}', flush=True)
  gib = lambda n: f'{n / 2**30:.2f}'  # noqa: E731
  print('| model | parameters | state GiB | on disk GiB | save s (median) | restore s | '
        'a checkpoint and best/ as a copy, GiB | ... as hard links, GiB |')
  print('|---|---|---|---|---|---|---|---|')
  for variant in args.models.split(','):
    r = measure(variant, args.saves, directory)
    print(f'| {variant} | {r["parameters"]:,} | {gib(r["state_bytes"])} | {gib(r["on_disk"])} | '
          f'{r["save_s"]:.2f} | {r["restore_s"]:.2f} | {gib(r["with_best_copy"])} | '
          f'{gib(r["with_best_linked"])} |', flush=True)


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='paper,owt')
  parser.add_argument('--saves', type=int, default=3, help='timed saves; the median is shown')
  parser.add_argument('--dir', default='/tmp/alexnet_benchmark_checkpoint')
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
