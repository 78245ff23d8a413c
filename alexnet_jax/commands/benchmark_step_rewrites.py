"""The step's rewrites, timed in one round on one GPU:
`python -m alexnet_jax.commands.benchmark_step_rewrites`.

First PyTorch's peer under `torch.compile` (`benchmarking/torch_peer.py`), owt at each batch
size, in a process of its own before JAX takes the GPU's memory (a line says when torch is
not installed). Then on one device the trainer's own step (`steps.make_train_step`) of
each model: today's, each rewrite of `models.OPTIONS` alone, and all of them together, at
`--batch` (owt also today's and all together at `--owt_large_batch`). Each row is checked
against today's step on one batch: the loss and the update of one step from the same
parameters, in the compute dtype's rounding. For each model it prints the 15 longest kernels
of today's step and of the fastest one, from a profiler trace (`benchmarking/kernels.py`),
then one markdown table. MFU counts the FLOPs of today's model, not the zero taps of conv1's
kernel padded for its blocks. `--smoke` runs the round small, on the CPU.

  python -m alexnet_jax.commands.benchmark_step_rewrites   # meant to fit 6 minutes on an H100
"""

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, optim
from alexnet_jax.benchmarking import kernels, table, torch_peer
from alexnet_jax.commands import benchmark
from alexnet_jax.data import augment, imagenet_color
from alexnet_jax.parallel import placement, steps

# The rewrites that change how each model is computed (owt has no LRN and one tower), each
# as the choice of `models.OPTIONS` after today's.
REWRITES_OF = {'owt': ('conv1', 'max_pool'), 'paper': tuple(models.OPTIONS)}
REWRITTEN = {field: choices[1] for field, choices in models.OPTIONS.items()}
# A row agrees with today's step where one step's loss is within 1% and its update points the
# same way (cosine) and is as long, within 2%: a bfloat16 step against a float32 one measured
# cosine 0.995 and length 0.994 (tests/parallel/test_steps.py).
LOSS_RTOL, MIN_COSINE, LENGTH_RTOL = 0.01, 0.98, 0.02
HEADER = ('model', 'batch', 'step', 'images/s', 'step ms', 'x today', 'x torch.compile',
          'compile s', 'TFLOP/s', 'MFU', 'against today')


def rows_of(args) -> list[tuple[str, int, str, dict]]:
  """(model, batch, row name, options) of every row, in the order they are timed."""
  rows = []
  for variant in args.models.split(','):
    fields = REWRITES_OF[variant]
    forms = ([('today', {})] + [(f'{f}={REWRITTEN[f]}', {f: REWRITTEN[f]}) for f in fields] +
             [('all', {f: REWRITTEN[f] for f in fields})])
    rows += [(variant, args.batch, name, options) for name, options in forms]
    if variant == 'owt' and args.owt_large_batch:
      rows += [(variant, args.owt_large_batch, name, options) for name, options in
               (forms[0], forms[-1])]
  return rows


def torch_batches(args) -> list[int]:
  return [args.batch] + ([args.owt_large_batch] if args.owt_large_batch else [])


def torch_compile_rates(args) -> dict[int, float]:
  """{batch: images/s} of PyTorch's peer under torch.compile, timed in a child process before
  this one starts JAX; none where torch is off, missing or fails, as a line says."""
  if args.torch == 'off' or 'owt' not in args.models.split(','):
    print('torch.compile: not timed (--torch=off, or no owt row)', flush=True)
    return {}
  missing = torch_peer.unavailable()
  if missing:
    print(f'torch.compile: not timed, {missing} (pip install torch torchvision to time it)',
          flush=True)
    return {}
  device = 'cpu' if args.smoke else 'cuda'
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark_step_rewrites',
             *sys.argv[1:], f'--torch_json={device}']
  try:
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
  except subprocess.CalledProcessError as error:
    print(f'torch.compile failed (exit {error.returncode}, its error is above): its column '
          'is "-"', flush=True)
    return {}
  rates = {int(batch): rate for batch, rate in json.loads(output.strip().splitlines()[-1]).items()}
  print(f'torch.compile ({torch_peer.versions()}) on {device}, owt: ' + ', '.join(
      f'batch {batch} {rate:,.0f} images/s' for batch, rate in rates.items()), flush=True)
  return rates


def _torch_json(args) -> None:
  """The child process of `torch_compile_rates`: its rates as JSON on the last line."""
  print(json.dumps({batch: torch_peer.images_per_s(
      'compile', args.torch_json, args.dtype, batch, args.image_size, args.num_classes,
      imagenet_color.MEAN_RGB, imagenet_color.STD_RGB, benchmark.SGD, args.steps, args.warmup,
      args.repeats) for batch in torch_batches(args)}))


class Row:
  """One model's step with some rewrites on one device, compiled, and its first step."""

  def __init__(self, args, variant: str, options: dict, batch: dict, initial):
    """`initial`: the model's initial train state (`initial_state`), the same whatever the
    options."""
    mesh = placement.make_mesh(jax.local_devices()[:1])
    model = models.AlexNet(num_classes=args.num_classes, variant=variant, width=args.width,
                           dtype=jnp.dtype(args.dtype), **options)
    self._initial = initial
    step = steps.make_train_step(model, augment.imagenet(args.image_size), 0, mesh)
    self.batch = placement.shard_batch(batch, mesh)
    start = time.perf_counter()
    self.step = step.lower(self._initial, self.batch).compile()
    self.compile_s = time.perf_counter() - start

  def init(self):
    """A copy of the initial state, for the step to donate."""
    return jax.tree.map(jnp.copy, self._initial)

  def first_step(self) -> tuple[float, np.ndarray]:
    """The loss of one step from the initial parameters, and those parameters after it."""
    state, metrics = self.step(self.init(), self.batch)
    return float(metrics['loss']), _flat(state.params)

  def time_steps(self, args) -> float:
    state = self.init()
    for _ in range(args.warmup):
      state, _ = self.step(state, self.batch)
    return benchmark.median_step_time(self.step, state, self.batch, args.steps, args.repeats)[0]

  def kernels(self, num_steps: int) -> tuple[str, dict[str, float]]:
    state, _ = self.step(self.init(), self.batch)   # compiled and warm before the trace

    def run():
      nonlocal state
      for _ in range(num_steps):
        state, metrics = self.step(state, self.batch)
      jax.block_until_ready((state, metrics))

    return kernels.traced_kernels(run, num_steps)


def initial_state(args, variant: str):
  """The train state every row of `variant` starts from, on the first device."""
  model = models.AlexNet(num_classes=args.num_classes, variant=variant, width=args.width)
  return placement.init_train_state(model, optim.paper_sgd(**benchmark.SGD), args.image_size, 0,
                                    placement.make_mesh(jax.local_devices()[:1]))


def _flat(params) -> np.ndarray:
  return np.concatenate([np.asarray(p, np.float64).ravel() for p in jax.tree.leaves(
      jax.device_get(params))])


def agreement(today: tuple, ours: tuple, init: np.ndarray) -> str:
  """'ok' or 'DIFFERS', with the loss's relative difference and the updates' cosine and
  length ratio, of one step from `init` against today's."""
  (loss, params), (our_loss, our_params) = today, ours
  update, our_update = params - init, our_params - init
  norms = np.linalg.norm(update) * np.linalg.norm(our_update)
  cosine = float(update @ our_update / norms) if norms else float('nan')
  length = float(np.linalg.norm(our_update) / np.linalg.norm(update))
  loss_diff = abs(our_loss - loss) / abs(loss)
  ok = loss_diff <= LOSS_RTOL and cosine >= MIN_COSINE and abs(length - 1) <= LENGTH_RTOL
  return (f'{"ok" if ok else "DIFFERS"}: loss {loss_diff:.1e}, cosine {cosine:.4f}, '
          f'length {length:.4f}')


def train_flops_per_image(args, variant: str) -> float:
  """The FLOPs of one image's forward and backward (2x) pass through the model as the paper
  defines it: today's form of every layer, whose count XLA gives without the taps on padding.
  A rewrite computes the same function; conv1 on blocks alone does work on zeros besides."""
  model = models.AlexNet(num_classes=args.num_classes, variant=variant, width=args.width)
  return 3 * benchmark.forward_flops(model, args.image_size)


def _batch(args, size: int) -> dict:
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (size, args.stored_size, args.stored_size, 3), np.uint8),
          'label': rng.integers(0, args.num_classes, (size,), np.int32)}


def run_rows(args, torch_rates: dict[int, float]) -> list[list[str]]:
  """Times every row; after each model's rows at `--batch`, the kernels of today's step and
  of the fastest. The table's rows."""
  cells, group, peak = [], {}, benchmark.peak_flops(args.dtype, args.peak_tflops)
  peak = peak / jax.local_device_count() if peak else None   # one device's
  flops = {v: train_flops_per_image(args, v) for v in args.models.split(',')}
  rows, initial = rows_of(args), {}
  for i, (variant, batch, name, options) in enumerate(rows):
    initial = initial if variant in initial else {variant: initial_state(args, variant)}
    row = Row(args, variant, options, _batch(args, batch), initial[variant])
    init = _flat(row.init().params)
    first = row.first_step()
    if name == 'today':
      group, today_first = {}, first
    step_s = row.time_steps(args)
    group[name] = (step_s, row)
    tflops = flops[variant] * batch / step_s / 1e12
    check = 'the reference' if name == 'today' else agreement(today_first, first, init)
    cells.append([variant, str(batch), name, f'{batch / step_s:,.0f}', f'{step_s * 1e3:.2f}',
                  f'{group["today"][0] / step_s:.2f}',
                  f'{batch / step_s / torch_rates[batch]:.2f}'
                  if variant == 'owt' and batch in torch_rates else '-',
                  f'{row.compile_s:.1f}', f'{tflops:.1f}',
                  f'{tflops * 1e12 / peak:.1%}' if peak else 'n/a', check])
    print(' | '.join(cells[-1]), flush=True)
    last_of_group = i + 1 == len(rows) or rows[i + 1][:2] != (variant, batch)
    if last_of_group and batch == args.batch:
      _print_kernels(args, variant, batch, group)
  return cells


def _print_kernels(args, variant: str, batch: int, group: dict) -> None:
  fastest = min(group, key=lambda name: group[name][0])
  for name in dict.fromkeys(('today', fastest)):
    source, times = group[name][1].kernels(args.profile_steps)
    kernels.print_kernel_table(f'{variant}, batch {batch}, {name}', source, times)


def main(args):
  if args.torch_json:
    _torch_json(args)
    return
  start = time.perf_counter()
  torch_rates = torch_compile_rates(args)   # before this process takes the GPU's memory
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, one '
        f'{jax.local_devices()[0].device_kind}, {args.dtype}', flush=True)
  cells = run_rows(args, torch_rates)
  print()
  table.print_markdown(HEADER, cells)
  print(f'\nThe round took {time.perf_counter() - start:.0f} s.')


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='owt,paper')
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--owt_large_batch', type=int, default=1024, help='0: none')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--stored_size', type=int, default=256)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--steps', type=int, default=10, help='steps per timed repeat')
  parser.add_argument('--repeats', type=int, default=3, help='the median repeat is reported')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--profile_steps', type=int, default=5)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='peak TFLOP/s of the device, for MFU where it is not known')
  parser.add_argument('--torch', default='auto', choices=('auto', 'off'))
  parser.add_argument('--smoke', action='store_true',
                      help='the round small, on the CPU: a narrow net on 64x64 patches')
  parser.add_argument('--torch_json', default=None, help=argparse.SUPPRESS)   # its device
  if parser.parse_args(argv).smoke:   # its sizes, where no flag gives another
    parser.set_defaults(image_size=64, stored_size=73, width=0.125, num_classes=10, batch=4,
                        owt_large_batch=8, steps=1, repeats=1, warmup=1, profile_steps=1)
  return parser.parse_args(argv)


if __name__ == '__main__':
  main(_parse_args())
