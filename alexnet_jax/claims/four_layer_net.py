"""Figure 1's network: "a four-layer convolutional neural network", as cuda-convnet's CIFAR-10
nets of that time were built (its layers-80sec.cfg): three 5x5 convolutions of 32, 32 and 64
kernels, each followed by its units and a 3x3, stride-2 max pool, then one fully connected
layer to the classes. No regularisation of any kind: no dropout, no response normalisation,
no weight decay (the figure's caption)."""

import flax.linen as nn

from alexnet_jax import models

KERNELS = (32, 32, 64)


class FourLayerNet(nn.Module):
  num_classes: int = 10
  activation: str = 'relu'   # one of models.ACTIVATIONS: the figure's ReLUs, or tanh units

  @nn.compact
  def __call__(self, images):
    x, units = images, models.ACTIVATIONS[self.activation]
    for i, features in enumerate(KERNELS):
      x = units(nn.Conv(features, (5, 5), padding=2, name=f'conv{i + 1}')(x))
      # Padded so that a 32x32 image gives 16x16, 8x8, then 4x4 maps.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)))
    return nn.Dense(self.num_classes, name='fc')(x.reshape(x.shape[0], -1))
