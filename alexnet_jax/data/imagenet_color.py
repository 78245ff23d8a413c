"""ImageNet's pixel statistics, as the configs and the benchmarks use them.

One place for the numbers: `configs/alexnet.py` sets its defaults from these, and the
benchmarks, which run on hosts without ml_collections, build the trainer's augmentation
from them without loading a config.
"""

MEAN_RGB = (123.68, 116.78, 103.94)   # ImageNet's mean pixel, 0-255 units
# torchvision's std (0.229, 0.224, 0.225) in 0-255 units: the `owt` variants divide by it.
STD_RGB = (58.395, 57.12, 57.375)
PCA_LIGHTING_STD = 0.1                 # the paper's std of the colour-shift coefficients
# ImageNet's RGB principal components, the values used since fb.resnet.torch (the paper
# used its own): eigenvalues of the covariance of pixels in [0, 1] times 255, so that the
# shift eigvec @ (alpha * eigval) is in 0-255 pixel units; eigenvectors as columns.
PCA_EIGVAL = (55.46, 4.794, 1.148)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
