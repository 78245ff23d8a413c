"""PyTorch's peer of the training step, timed beside the JAX step by `commands.benchmark`.

torchvision's AlexNet (`torchvision.models.alexnet`, the single-tower network of the `owt`
variant) trained with `torch.optim.SGD`, in `channels_last` (cuDNN's fast layout for
tensor-core convolutions), under bfloat16 autocast where the JAX row is bfloat16, on a batch
of uint8 patches already on the device that the step normalises: eager, or under
`torch.compile` (its default mode). The JAX step does more: it cuts each patch from a
256x256 image, reflects it and shifts its colours on the device, work that torchvision's
training recipe does on the host.

torch is imported inside the functions alone, so importing this module needs no PyTorch.
"""

import importlib.metadata
import importlib.util
import statistics
import time

MODES = ('eager', 'compile')


def unavailable() -> str | None:
  """None where torch and torchvision are installed, else what is missing, in words.

  Looked up without importing them: the processes that ask run JAX, and PyTorch's CUDA
  libraries stay out of them.
  """
  missing = [name for name in ('torch', 'torchvision') if importlib.util.find_spec(name) is None]
  if not missing:
    return None
  return f'{" and ".join(missing)} {"is" if len(missing) == 1 else "are"} not installed'


def versions() -> str:
  return ', '.join(f'{name} {importlib.metadata.version(name)}' for name in ('torch', 'torchvision'))


def sgd(parameters, learning_rate: float, momentum: float, weight_decay: float):
  """torch.optim.SGD: b <- momentum * b + (grad + weight_decay * w); w <- w - lr * b.

  At a constant rate this is the paper's update (`optim.paper_sgd`), whose velocity is
  -lr * b.
  """
  import torch
  return torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum,
                         weight_decay=weight_decay)


def images_per_s(mode: str, device: str, dtype: str, batch: int, image_size: int,
                 num_classes: int, mean_rgb, std_rgb, sgd_hyperparameters: dict, steps: int,
                 warmup: int, repeats: int) -> float:
  """The median over `repeats` of `steps` training steps' images/s on `device` ('cuda' or
  'cpu'), after a warm-up step at least: compiling and cuDNN's kernel choice go untimed."""
  if mode not in MODES:
    raise ValueError(f'Unknown PyTorch mode {mode!r}: use one of {", ".join(MODES)}.')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'Unknown dtype {dtype!r} for the PyTorch peer: use float32 or bfloat16.')
  import torch
  import torchvision
  device = torch.device(device)
  if device.type == 'cuda':
    if not torch.cuda.is_available():
      raise RuntimeError(f'torch {torch.__version__} sees no CUDA device (a CPU-only build, or '
                         'CUDA_VISIBLE_DEVICES hides them): install a CUDA build of torch, or '
                         'run the benchmark with --torch=off.')
    torch.backends.cudnn.benchmark = True   # fixed shapes: time each convolution's kernels once
  torch.manual_seed(0)
  model = torchvision.models.alexnet(num_classes=num_classes).to(
      device, memory_format=torch.channels_last)
  model.train()
  optimizer = sgd(model.parameters(), **sgd_hyperparameters)
  images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8,
                         device=device).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  mean = torch.tensor(mean_rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1)
  std = torch.tensor(std_rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1)

  def loss_of(images, labels):
    logits = model((images.float() - mean) / std)
    return torch.nn.functional.cross_entropy(logits, labels)

  if mode == 'compile':
    # The forward and, through AOTAutograd, the backward. Static shapes: a second batch size
    # timed in the same process compiles for its own shape, not for any.
    loss_of = torch.compile(loss_of, dynamic=False)

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = loss_of(images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  def synchronize():
    if device.type == 'cuda':
      torch.cuda.synchronize(device)

  for _ in range(max(warmup, 1)):
    step()
  synchronize()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    synchronize()
    times.append((time.perf_counter() - start) / steps)
  return batch / statistics.median(times)
