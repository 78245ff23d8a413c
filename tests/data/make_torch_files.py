"""Writes the PyTorch files the tests read, with PyTorch itself, and the numbers they must give.

  python tests/data/make_torch_files.py    # in an environment with torch (CPU) installed

The tests need no PyTorch: they read these files and compare with the JSON written here.
`TorchvisionAlexNet` is torchvision's `AlexNet` (torchvision/models/alexnet.py) with every
layer's size a parameter, so that a narrow one makes a file of tens of KB.
"""

import collections
import json
import pathlib

import numpy as np
import torch
from torch import nn

HERE = pathlib.Path(__file__).parent
OWT_SIZES = dict(convs=(1, 3, 6, 4, 4), hidden=64, classes=10)   # owt at width 1/64


class TorchvisionAlexNet(nn.Module):

  def __init__(self, convs=(64, 192, 384, 256, 256), hidden=4096, classes=1000):
    super().__init__()
    c1, c2, c3, c4, c5 = convs
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(c5 * 6 * 6, hidden), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_images() -> np.ndarray:
  """float32 [2, 224, 224, 3] (NHWC), the same formula as tests/test_weights.py's."""
  n, h, w, c = np.meshgrid(np.arange(2), np.arange(224), np.arange(224), np.arange(3),
                           indexing='ij')
  return (2.0 * np.sin(0.05 * h * (c + 1) + 0.07 * w - 1.3 * n + c)).astype(np.float32)


def summary(t: torch.Tensor) -> dict:
  a = t.detach().to(torch.float64).numpy()
  return {'shape': list(a.shape), 'dtype': str(t.dtype).replace('torch.', ''),
          'sum': float(a.sum()), 'values': a.reshape(-1).tolist() if a.size <= 24 else
          a.reshape(-1)[:3].tolist() + a.reshape(-1)[-3:].tolist()}


def owt_file():
  torch.manual_seed(0)
  model = TorchvisionAlexNet(**OWT_SIZES).eval()
  with torch.no_grad():
    for p in model.parameters():   # biases too, so that no unit stays dead
      p.normal_(0.0, 1.0 / np.sqrt(p[0].numel()) if p.ndim > 1 else 0.2)
    logits = model(torch.from_numpy(test_images()).permute(0, 3, 1, 2))
  torch.save(model.state_dict(), HERE / 'owt_narrow.pth')
  json.dump({'sizes': OWT_SIZES, 'torch': torch.__version__,
             'logits': logits.numpy().astype(np.float64).tolist(),
             'tensors': {k: summary(v) for k, v in model.state_dict().items()}},
            open(HERE / 'owt_narrow.json', 'w'), indent=1)


def formats_file():
  torch.manual_seed(1)
  big = torch.arange(10, dtype=torch.float32) * 0.5
  matrix = torch.randn(3, 4, dtype=torch.float64)
  state = collections.OrderedDict([
      ('big', big),
      ('slice', big[2:7:2]),                        # a view: offset 2, stride 2, shared storage
      ('transposed', matrix.t()),                   # strides (1, 4)
      ('half', torch.randn(2, 3).half()),
      ('bfloat16', torch.randn(5).bfloat16()),
      ('long', torch.tensor([-3, 0, 2**40])),
      ('int8', torch.tensor([-128, 5, 127], dtype=torch.int8)),
      ('bool', torch.tensor([[True, False], [False, True]])),
      ('scalar', torch.tensor(2.25)),
      ('empty', torch.zeros(0, 3)),
      ('parameter', nn.Parameter(torch.ones(2))),   # saved as a Parameter, not a plain tensor
  ])
  torch.save(state, HERE / 'formats.pth')
  json.dump({k: summary(v) for k, v in state.items()}, open(HERE / 'formats.json', 'w'),
            indent=1)


def refused_files():
  torch.save({'w': torch.ones(2)}, HERE / 'legacy_format.pth', _use_new_zipfile_serialization=False)
  torch.save(nn.Linear(2, 2), HERE / 'whole_module.pth')
  torch.save({'model': {'w': torch.ones(2)}, 'epoch': 3}, HERE / 'training_checkpoint.pth')


if __name__ == '__main__':
  owt_file()
  formats_file()
  refused_files()
