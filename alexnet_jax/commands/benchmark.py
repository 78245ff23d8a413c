"""Training-step throughput: `python -m alexnet_jax.commands.benchmark`.

Times the trainer's own step (`steps.make_train_step`: the paper's patches,
reflections and colour shift cut on the device from 256x256 images, the same
model, optimiser, pmean and non-finite guard) on all local devices, on
synthetic uint8 batches already on the devices, so the numbers are the step's
alone.
For each model, mesh, dtype and global batch size it prints images/s, the
time of the first compile, the peak memory of one device where the backend
reports it (or XLA's plan of one device's memory for the step where it does
not), and the model FLOPs utilisation against `--peak_tflops` or a known peak
for the device. Each configuration runs in a process of its own.

Beside each `owt` row on data parallelism it times PyTorch's peer where torch and
torchvision are installed (`alexnet_jax/benchmarking/torch_peer.py`: torchvision's AlexNet, the same SGD,
`channels_last`, bfloat16 autocast for the bfloat16 rows), eager and under `torch.compile`,
on the same device and batch, in a process of its own, and prints the ratios JAX/PyTorch: on
shared, noisy machines a side-by-side ratio says more than an absolute time. Imports no
TensorFlow, and no torch outside the peer's process.

  python -m alexnet_jax.commands.benchmark --models=owt,paper --dtypes=float32,bfloat16 \
      --batch_sizes=128,256 --steps=20
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, optim
from alexnet_jax.benchmarking import table, torch_peer
from alexnet_jax.data import augment, imagenet_color
from alexnet_jax.parallel import placement, steps

# Dense peak FLOP/s per device (vendor figures), by a piece of the device kind
# and the compute dtype; float32 matmuls on these GPUs run as TF32 by default.
KNOWN_PEAKS = {
    'H100': {'bfloat16': 989e12, 'float32': 494e12},
    'H200': {'bfloat16': 989e12, 'float32': 494e12},
    'A100': {'bfloat16': 312e12, 'float32': 156e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12},
    'TPU v6 lite': {'bfloat16': 918e12, 'float32': 918e12},
}
SGD = {'learning_rate': 0.01, 'momentum': 0.9, 'weight_decay': 5e-4}   # the paper's, both steps


def _peak_flops(dtype: str, peak_tflops: float | None) -> float | None:
  if peak_tflops:
    return peak_tflops * 1e12 * jax.local_device_count()
  kind = jax.local_devices()[0].device_kind
  for name, peaks in KNOWN_PEAKS.items():
    if name in kind:
      return peaks[dtype] * jax.local_device_count()
  return None


def forward_flops(model, image_size: int) -> float:
  """FLOPs of one image's forward pass, as XLA counts them (a multiply-add is 2).

  Counted by the CPU backend on every platform: on GPU the compiled
  convolutions are library calls whose FLOPs XLA's analysis leaves out. The
  float32 model is counted, so that dtype casts do not count as work.
  """
  model = model.clone(dtype=jnp.float32)
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
  on_cpu = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(images.shape), train=False))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      jax.tree.map(on_cpu, variables), on_cpu(images)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops'])


def _memory(compiled, devices) -> tuple[str, float | None]:
  stats = [d.memory_stats() for d in devices]
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return 'peak', max(s['peak_bytes_in_use'] for s in stats) / 2**30
  analysis = compiled.memory_analysis()
  if analysis is None:
    return 'n/a', None
  planned = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
             analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return 'plan', planned / 2**30


def _median_step_time(step, state, batch, num_steps: int, repeats: int):
  """Median over `repeats` of (time of `num_steps` steps) / num_steps, and the last state."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / num_steps)
  return statistics.median(times), state


def bench_jax(variant: str, dtype: str, global_batch: int, image_size: int, num_classes: int,
              num_steps: int, warmup: int, repeats: int, peak_tflops: float | None = None,
              model_axis_size: int = 1, stored_size: int = 256) -> dict:
  devices = jax.local_devices()
  mesh = placement.make_mesh(devices, model_axis_size)
  model = models.AlexNet(num_classes=num_classes, variant=variant, dtype=jnp.dtype(dtype))
  state = placement.init_train_state(model, optim.paper_sgd(**SGD), image_size,
                                   seed=0, mesh=mesh)
  rng = np.random.default_rng(0)
  batch = placement.shard_batch({
      'image': rng.integers(0, 256, (global_batch, stored_size, stored_size, 3), np.uint8),
      'label': rng.integers(0, num_classes, (global_batch,), np.int32),
  }, mesh, placement.batch_spec(model, mesh))
  train_step = steps.make_train_step(model, augment.imagenet(image_size), seed=0, mesh=mesh)

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  step_s, state = _median_step_time(compiled, state, batch, num_steps, repeats)
  memory_kind, memory_gib = _memory(compiled, devices)
  train_flops = 3 * forward_flops(model, image_size) * global_batch  # backward ~ 2x forward
  peak = _peak_flops(dtype, peak_tflops)
  return {
      'images_per_s': global_batch / step_s,
      'step_ms': step_s * 1e3,
      'compile_s': compile_s,
      'memory': f'{memory_gib:.2f} ({memory_kind})' if memory_gib is not None else 'n/a',
      'mfu': f'{train_flops / step_s / peak:.1%}' if peak else 'n/a',
      'tflops': train_flops / step_s / 1e12,
  }


HEADER = ('model', 'mesh (batch x model)', 'dtype', 'batch', 'images/s', 'step ms', 'compile s',
          'memory GiB per device', 'TFLOP/s', 'MFU', 'torch eager images/s',
          'torch.compile images/s', 'jax/torch eager', 'jax/torch.compile')


def configuration_row(args, variant: str, dtype: str, batch: int, model_axis_size: int) -> dict:
  """The JAX step's cells of one table row, and its images/s."""
  r = bench_jax(variant, dtype, batch, args.image_size, args.num_classes, args.steps,
                args.warmup, args.repeats, args.peak_tflops, model_axis_size,
                args.stored_size)
  mesh = f'{jax.local_device_count() // model_axis_size} x {model_axis_size}'
  cells = [variant, mesh, dtype, str(batch), f'{r["images_per_s"]:.1f}', f'{r["step_ms"]:.1f}',
           f'{r["compile_s"]:.1f}', r['memory'], f'{r["tflops"]:.2f}', r['mfu']]
  return {'cells': cells, 'images_per_s': r['images_per_s']}


def peer_modes(args) -> tuple[str, ...]:
  return {'auto': torch_peer.MODES, 'off': ()}.get(args.torch, (args.torch,))


def peer_device(args) -> tuple[str | None, str]:
  """The device PyTorch's peer runs on ('cuda' or 'cpu'; None: not timed), and a line that
  says so. Asks JAX which devices it has, and never imports torch."""
  if args.torch == 'off':
    return None, 'PyTorch peer: off (--torch=off)'
  missing = torch_peer.unavailable()
  if missing and args.torch != 'auto':
    raise SystemExit(f'--torch={args.torch} times PyTorch, but {missing}: install torch and '
                     'torchvision, or pass --torch=auto or --torch=off.')
  if missing:
    return None, f'PyTorch peer: not timed, {missing} (pip install torch torchvision to time it)'
  backend, count = jax.default_backend(), jax.local_device_count()
  if backend == 'gpu' and count > 1:
    return None, (f'PyTorch peer: not timed, it runs on one GPU and JAX here has {count} '
                  '(CUDA_VISIBLE_DEVICES=0 compares one with one)')
  if backend not in ('gpu', 'cpu'):
    return None, f'PyTorch peer: not timed, it runs on a CUDA GPU or the CPU, and JAX is on {backend}'
  device = 'cuda' if backend == 'gpu' else 'cpu'
  return device, (f'PyTorch peer: {torch_peer.versions()} on {device}, '
                  f'{" and ".join(peer_modes(args))}, beside each owt row on data parallelism')


def peer_rates(args, device: str, dtype: str, batch: int) -> dict[str, float]:
  """images/s of PyTorch's peer in each of the modes asked for."""
  return {mode: torch_peer.images_per_s(
              mode, device, dtype, batch, args.image_size, args.num_classes,
              imagenet_color.MEAN_RGB, imagenet_color.STD_RGB, SGD, args.steps, args.warmup,
              args.repeats)
          for mode in peer_modes(args)}


def peer_cells(jax_images_per_s: float, rates: dict[str, float]) -> list[str]:
  """The peer's columns: images/s in each mode, then JAX's images/s over each ('-': not timed)."""
  return ([f'{rates[mode]:.1f}' if mode in rates else '-' for mode in torch_peer.MODES] +
          [f'{jax_images_per_s / rates[mode]:.2f}' if mode in rates else '-'
           for mode in torch_peer.MODES])


def _in_child_process(args, env: dict, dtype: str, batch: int, *configuration: str):
  """What a fresh process with environment `env` prints last, as JSON: one configuration's
  row or peer. A process of its own, so the device's peak memory is that step's alone, and
  PyTorch and JAX never share a process."""
  listed = ('models', 'dtypes', 'batch_sizes', 'model_axis_sizes')
  flags = [f'--{name}' if value is True else f'--{name}={value}'
           for name, value in vars(args).items()
           # `is`, not `==`: a flag of 0 (--warmup=0) equals False and is passed on too.
           if value is not None and value is not False and name not in listed]
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark', f'--dtypes={dtype}',
             f'--batch_sizes={batch}', *flags, *configuration]
  output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                          env=env).stdout
  return json.loads(output.strip().splitlines()[-1])


def _peer_in_child_process(args, env: dict, device: str, dtype: str, batch: int
                           ) -> dict[str, float]:
  """The peer's rates; none (its columns '-') where its process fails, whose error is then
  printed above, so that the JAX rows still come out."""
  try:
    return _in_child_process(args, env, dtype, batch, '--models=owt',
                             f'--peer_json={device}')
  except subprocess.CalledProcessError as error:
    print(f'PyTorch peer failed at {dtype}, batch {batch} (exit {error.returncode}, its error '
          'is above): its columns are "-"', flush=True)
    return {}


def main(args):
  configurations = [(variant, dtype, int(batch), int(split))
                    for variant in args.models.split(',')
                    for split in args.model_axis_sizes.split(',')
                    for dtype in args.dtypes.split(',')
                    for batch in args.batch_sizes.split(',')]
  if args.row_json:
    print(json.dumps(configuration_row(args, *configurations[0])))
    return
  if args.peer_json:
    _, dtype, batch, _ = configurations[0]
    print(json.dumps(peer_rates(args, args.peer_json, dtype, batch)))
    return
  env = dict(os.environ)   # the configurations' processes', as given
  if not args.one_process:
    # This process only asks JAX which devices there are: on a GPU it would otherwise hold
    # 75% of the memory that the configurations' processes, JAX's and PyTorch's, need.
    os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{jax.local_device_count()} x {jax.local_devices()[0].device_kind}', flush=True)
  device, peer_line = peer_device(args)
  print(peer_line, flush=True)
  rows = []
  for variant, dtype, batch, split in configurations:
    r = (configuration_row(args, variant, dtype, batch, split) if args.one_process
         else _in_child_process(args, env, dtype, batch, f'--models={variant}',
                                f'--model_axis_sizes={split}', '--row_json'))
    rates = (_peer_in_child_process(args, env, device, dtype, batch)
             if device and variant == 'owt' and split == 1 else {})
    rows.append(r['cells'] + peer_cells(r['images_per_s'], rates))
    print(' | '.join(rows[-1]), flush=True)
  print()
  table.print_markdown(HEADER, rows)


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='owt,paper')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--batch_sizes', default='128,256', help='global batch sizes')
  parser.add_argument('--model_axis_sizes', default='1',
                      help='devices that split the network (the mesh\'s model axis); 1: data '
                           'parallelism alone, 2: the paper\'s towers or owt\'s split classifier')
  parser.add_argument('--image_size', type=int, default=224, help='the patch the model sees')
  parser.add_argument('--stored_size', type=int, default=256,
                      help='the stored images the patches are cut from')
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--steps', type=int, default=10, help='steps per timed repeat')
  parser.add_argument('--repeats', type=int, default=3, help='the median repeat is reported')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='peak TFLOP/s of one device, for MFU where the device is not known')
  parser.add_argument('--torch', default='auto', choices=('auto', 'off', *torch_peer.MODES),
                      help='PyTorch\'s peer beside the owt rows: auto (eager and torch.compile '
                           'where torch and torchvision are installed), off, or one mode')
  parser.add_argument('--one_process', action='store_true',
                      help='run every JAX configuration in this process (the memory column is '
                           'then the peak so far, not each configuration\'s own); PyTorch\'s '
                           'peer still runs in processes of its own')
  parser.add_argument('--row_json', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--peer_json', default=None, help=argparse.SUPPRESS)   # its device
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
