"""Training-step throughput: `python -m alexnet_jax.commands.benchmark`.

Times the trainer's own step (`parallel.make_train_step`: the paper's patches,
reflections and colour shift cut on the device from 256x256 images, the same
model, optimiser, pmean and non-finite guard) on all local devices, on
synthetic uint8 batches already on the devices, so the numbers are the step's
alone.
For each model, mesh, dtype and global batch size it prints images/s, the
time of the first compile, the peak memory of one device where the backend
reports it (or XLA's plan of one device's memory for the step where it does
not), and the model FLOPs utilisation against `--peak_tflops` or a known peak
for the device. Each configuration runs in a process of its own.

Where PyTorch is installed, the same single-tower AlexNet (torchvision's,
written below) is timed as a training step on the same device and batch, and
the ratio JAX/PyTorch is printed: on shared, noisy machines a side-by-side
ratio says more than an absolute time. Imports no TensorFlow.

  python -m alexnet_jax.commands.benchmark --models=owt,paper --dtypes=float32,bfloat16 \
      --batch_sizes=128,256 --steps=20
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, optim, parallel
from alexnet_jax.data import augment, imagenet_color

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


def augmentation(image_size: int) -> augment.Augmentation:
  """The trainer's default augmentation for `owt` (configs/alexnet.py) for `image_size` patches."""
  as_array = lambda values: np.asarray(values, np.float32)
  return augment.Augmentation(image_size=image_size, mean=as_array(imagenet_color.MEAN_RGB),
                              std=as_array(imagenet_color.STD_RGB),
                              pca_std=imagenet_color.PCA_LIGHTING_STD,
                              pca_eigval=as_array(imagenet_color.PCA_EIGVAL),
                              pca_eigvec=as_array(imagenet_color.PCA_EIGVEC))


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


def _median_step_time(step, state, batch, steps: int, repeats: int):
  """Median over `repeats` of (time of `steps` steps) / steps, and the last state."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), state


def bench_jax(variant: str, dtype: str, global_batch: int, image_size: int, num_classes: int,
              steps: int, warmup: int, repeats: int, peak_tflops: float | None = None,
              model_axis_size: int = 1, stored_size: int = 256) -> dict:
  devices = jax.local_devices()
  mesh = parallel.make_mesh(devices, model_axis_size)
  model = models.AlexNet(num_classes=num_classes, variant=variant, dtype=jnp.dtype(dtype))
  state = parallel.init_train_state(model, optim.paper_sgd(**SGD), image_size,
                                   seed=0, mesh=mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      'image': rng.integers(0, 256, (global_batch, stored_size, stored_size, 3), np.uint8),
      'label': rng.integers(0, num_classes, (global_batch,), np.int32),
  }, mesh, parallel.batch_spec(model, mesh))
  train_step = parallel.make_train_step(model, augmentation(image_size), seed=0, mesh=mesh)

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  step_s, state = _median_step_time(compiled, state, batch, steps, repeats)
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


def _torch_alexnet(num_classes: int):
  """torchvision's AlexNet (the `owt` variant), written out so torchvision is not needed."""
  from torch import nn
  return nn.Sequential(
      nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
      nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
      nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
      nn.Linear(4096, num_classes))


def bench_torch(dtype: str, global_batch: int, image_size: int, num_classes: int, steps: int,
                warmup: int, repeats: int) -> dict | None:
  """The same training step in PyTorch eager on this backend's device, or None."""
  try:
    import torch
  except ImportError:
    return None
  on_gpu = jax.default_backend() == 'gpu'
  if on_gpu and not torch.cuda.is_available():
    return None
  device = torch.device('cuda' if on_gpu else 'cpu')
  # NHWC is cuDNN's fast layout for tensor-core convolutions (and XLA's choice on GPU).
  memory_format = torch.channels_last if on_gpu else torch.contiguous_format
  model = _torch_alexnet(num_classes).to(device, memory_format=memory_format)
  opt = torch.optim.SGD(model.parameters(), lr=SGD['learning_rate'], momentum=SGD['momentum'],
                        weight_decay=SGD['weight_decay'])
  images = torch.randint(0, 256, (global_batch, 3, image_size, image_size), dtype=torch.uint8,
                         device=device).contiguous(memory_format=memory_format)
  labels = torch.randint(0, num_classes, (global_batch,), device=device)
  mean = torch.tensor(imagenet_color.MEAN_RGB, device=device).view(1, 3, 1, 1)
  std = torch.tensor(imagenet_color.STD_RGB, device=device).view(1, 3, 1, 1)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def step():
    with autocast:
      loss = torch.nn.functional.cross_entropy(model((images.float() - mean) / std), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      loss = step()
    loss.item()
    sync()
    times.append((time.perf_counter() - start) / steps)
  return {'images_per_s': global_batch / statistics.median(times), 'threads': torch.get_num_threads()}


HEADER = ('model', 'mesh (batch x model)', 'dtype', 'batch', 'images/s', 'step ms', 'compile s',
          'memory GiB per device', 'TFLOP/s', 'MFU', 'torch images/s', 'jax/torch')


def configuration_row(args, variant: str, dtype: str, batch: int, model_axis_size: int
                      ) -> list[str]:
  """One table row: the JAX step, and for `owt` on data parallelism the PyTorch step beside it."""
  r = bench_jax(variant, dtype, batch, args.image_size, args.num_classes, args.steps,
                args.warmup, args.repeats, args.peak_tflops, model_axis_size,
                args.stored_size)
  t = (bench_torch(dtype, batch, args.image_size, args.num_classes, args.steps, args.warmup,
                   args.repeats)
       if variant == 'owt' and model_axis_size == 1 and not args.no_torch else None)
  mesh = f'{jax.local_device_count() // model_axis_size} x {model_axis_size}'
  return [variant, mesh, dtype, str(batch), f'{r["images_per_s"]:.1f}', f'{r["step_ms"]:.1f}',
          f'{r["compile_s"]:.1f}', r['memory'], f'{r["tflops"]:.2f}', r['mfu'],
          f'{t["images_per_s"]:.1f}' if t else '-',
          f'{r["images_per_s"] / t["images_per_s"]:.2f}' if t else '-']


def _row_in_child_process(args, variant: str, dtype: str, batch: int, model_axis_size: int
                          ) -> list[str]:
  """The row computed by a fresh process, so the device's peak memory is this step's alone."""
  listed = ('models', 'dtypes', 'batch_sizes', 'model_axis_sizes')
  flags = [f'--{name}' if value is True else f'--{name}={value}'
           for name, value in vars(args).items()
           # `is`, not `==`: a flag of 0 (--warmup=0) equals False and is passed on too.
           if value is not None and value is not False and name not in listed]
  command = [sys.executable, '-m', 'alexnet_jax.commands.benchmark', f'--models={variant}',
             f'--dtypes={dtype}', f'--batch_sizes={batch}',
             f'--model_axis_sizes={model_axis_size}', *flags, '--row_json']
  output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def main(args):
  configurations = [(variant, dtype, int(batch), int(split))
                    for variant in args.models.split(',')
                    for split in args.model_axis_sizes.split(',') for dtype in args.dtypes.split(',') for batch in args.batch_sizes.split(',')]
  if args.row_json:
    print(json.dumps(configuration_row(args, *configurations[0])))
    return
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{jax.local_device_count()} x {jax.local_devices()[0].device_kind}', flush=True)
  rows = []
  for configuration in configurations:
    rows.append(configuration_row(args, *configuration) if args.one_process
                else _row_in_child_process(args, *configuration))
    print(' | '.join(rows[-1]), flush=True)
  print()
  print('| ' + ' | '.join(HEADER) + ' |')
  print('|' + '---|' * len(HEADER))
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')


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
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch reference')
  parser.add_argument('--one_process', action='store_true',
                      help='run every configuration in this process (the memory column is then '
                           'the peak so far, not each configuration\'s own)')
  parser.add_argument('--row_json', action='store_true', help=argparse.SUPPRESS)
  return parser.parse_args()


if __name__ == '__main__':
  main(_parse_args())
