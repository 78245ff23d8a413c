"""AlexNet configs: `--config=configs/alexnet.py[:VARIANT]`.

  (none), paper  the paper's two-tower AlexNet on ImageNet, its hyperparameters
  owt            the single-tower "one weird trick" AlexNet (torchvision's) on ImageNet
  demo           a narrow one-tower AlexNet on generated images: no download, minutes on a CPU
  imagenette     a reduced one-tower AlexNet on ../shared/data/imagenette (real JPEGs, 10 classes)
  claims         the paper's two-tower net at imagenette's size: the claims table's base
  torchvision    owt with torchvision's input normalisation: the config of weights imported
                 from torchvision (`python -m alexnet_jax.commands.weights import`), and of fine-tuning them

Any field can be overridden, e.g. `--config.global_batch_size=256`.
"""

import ml_collections
from ml_collections import config_dict

from alexnet_jax.data import imagenet_color


def get_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model (section 3 of the paper).
  # 'paper' (two towers, LRN), 'owt' (one tower, no LRN: torchvision's) or 'paper_one_tower'
  # (the paper's one-GPU comparison: one tower, half the kernels of conv1-conv4).
  config.model = 'paper'
  config.width = 1.0               # multiplies every layer's size; 1.0 is the paper's
  config.dropout_rate = 0.5        # of fc6's and fc7's outputs; 0 turns dropout off
  # The paper's other choices, each measured against an alternative in section 3 (README,
  # "The paper's claims"); a resume with another choice is refused.
  config.activation = 'relu'       # 'relu' or 'tanh' (figure 1's saturating units)
  config.lrn = config_dict.placeholder(bool)  # LRN after conv1, conv2; None: the model's own
  config.pooling = 'overlapping'   # 'overlapping' (3x3, stride 2) or 'non_overlapping' (2x2)
  # How the weights and biases start. 'caffe': BVLC Caffe's reference AlexNet, the paper's
  # N(0, 0.01) weights but biases of 0.1 instead of 1 and fc6/fc7 weights N(0, 0.005); with
  # the paper's exact values ('paper': biases of 1) the loss stays flat (README). 'pytorch':
  # PyTorch's default, which the owt variant uses.
  config.initialization = 'caffe'
  # Compute dtype; parameters stay float32. 'auto': bfloat16 on GPUs and TPUs (1.3 to 1.5x
  # the speed on an H100, the same Imagenette curve), float32 on the CPU (BENCHMARKS.md).
  config.dtype = 'auto'
  # Devices that split the network between them (the mesh's `model` axis); the rest of the
  # devices split the batch. 1: data parallelism alone. 2 with model='paper': one tower per
  # device, as on the paper's two GPUs. With model='owt': its fully connected layers split
  # over that many devices, its convolutions data parallel ("one weird trick").
  config.model_axis_size = 1
  # Rewrites of the step, each the same function computed otherwise (alexnet_jax/layers.py);
  # the defaults are today's forms until a GPU measures the others (BENCHMARKS.md, "The step's
  # rewrites").
  config.conv1 = 'direct'          # 'space_to_depth': conv1 at stride 1 on 4x4 blocks, 48 channels
  config.max_pool = 'reduce_window'  # 'slices': the max of nine strided slices, no scatter
  config.lrn_gradient = 'autodiff'   # 'by_hand': LRN's gradient written out, in float32 (paper)
  config.tower_layout = 'joined'   # 'apart': the towers' maps joined only before conv3 and fc6

  # Data (section 4.1; alexnet_jax/data/__init__.py).
  # A store prepared by `python -m alexnet_jax.commands.prepare` (a name in data_dir, or a path),
  # 'image_folder:ROOT' (ROOT/train/<class>/*, ROOT/val/<class>/*, read as they are) or
  # 'synthetic'.
  config.dataset = 'imagenet2012'
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: ~/alexnet_jax_data
  config.imagenet_wnid_labels = False  # image_folder: class folders named by ImageNet wnids
                                       # take their ImageNet-1k index (1000 outputs)
  config.train_split = 'train'     # a split, sliced as in TFDS if need be: 'train[:90%]'
  config.eval_split = 'validation'
  config.resize_size = 256         # the stored square: shorter side to this, centre square
  config.image_size = 224          # the random (train) or centre (eval) patch of that square
  # Decoding on this host: processes (0: in the trainer's process) and threads in each;
  # -1 picks: a process per 8 cores, none below 8 cores, and threads for every core.
  config.data_workers = -1
  config.data_threads = -1
  # Who decodes the store's JPEGs: 'host', 'device' (NVIDIA GPUs, by nvImageCodec: README,
  # "Install"), or 'auto': the GPUs where they are and the package loads, else the host. The
  # host by default, as the GPU's decoders have not yet been measured feeding the loop faster
  # than a host's cores (BENCHMARKS.md, "Decoding on the GPU").
  config.decode = 'host'
  # With GPU decoding: the share of each device's rows the host decodes anyway, or 'auto':
  # split by the host's and the GPUs' rates, measured before step 1 and kept in the
  # checkpoints (alexnet_jax/data/decode_share.py); and the share of the GPU's rows its
  # hardware JPEG engines take (the rest, and any they refuse, go to nvJPEG's CUDA decoder,
  # which decodes the Huffman codes of small images on the host's cores).
  config.decode_host_share = config_dict.FieldReference(0.5, field_type=object)
  config.decode_hardware_share = 1.0
  # With GPU decoding: batches decoded at once, each on a thread with decoders of its own
  # (an nvImageCodec decoder keeps one hardware batch in flight); 1 decodes one batch after
  # another on the loader's thread.
  config.decode_in_flight = 2
  # A record of the store that cannot be read or decoded stops the run (its step saved) with
  # its shard named. True goes on past such records instead: training reads another image of
  # the batch in place of each, evaluation leaves each out, every one logged and counted
  # (train/skipped_records, eval/skipped_records). Off by default, as a silent skip would
  # change the data the run trains and is measured on.
  config.skip_damaged_records = False
  config.mean_rgb = imagenet_color.MEAN_RGB  # ImageNet's mean pixel, subtracted on the device
  # 'pixel': subtract mean_rgb. 'image': the training set's mean image, as the paper did
  # (needs color_stats='computed').
  config.subtract_mean = 'pixel'
  config.std_rgb = (1.0, 1.0, 1.0)  # the paper feeds raw pixel values minus the mean
  # Training's random patches and their reflections; off, the centre patch, unreflected.
  config.random_patches = True
  config.reflections = True
  # std of the PCA colour-shift coefficients; 0 turns it off.
  config.pca_lighting_std = imagenet_color.PCA_LIGHTING_STD
  # ImageNet's RGB principal components in 0-255 pixel units, eigenvectors as columns.
  config.pca_eigval = imagenet_color.PCA_EIGVAL
  config.pca_eigvec = imagenet_color.PCA_EIGVEC
  # 'config': mean_rgb and the PCA above; 'computed': those of this training set, from
  # WORKDIR/color_stats.json, written by `python -m alexnet_jax.commands.color_stats`.
  config.color_stats = 'config'
  config.synthetic = ml_collections.ConfigDict(
      dict(num_classes=10, train_examples=12_800, eval_examples=1_000))

  # Optimisation (section 5): SGD, momentum 0.9, weight decay 5e-4, lr 0.01
  # divided by 10 when the validation error stops improving, three times at most.
  config.global_batch_size = 128   # split evenly between all devices of all hosts
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.plateau = ml_collections.ConfigDict(
      dict(patience=4, min_delta=0.0, factor=0.1, max_drops=3))
  # 'plateau': the rule above. 'cosine': a half cosine from learning_rate down to 0 over the
  # run, a function of the step alone (plateau unused).
  config.lr_schedule = 'plateau'
  config.num_epochs = 90.0
  config.num_train_steps = -1      # positive: overrides num_epochs

  # Evaluation, logging, checkpoints.
  config.eval_every_epochs = 1.0
  config.eval_every_steps = -1     # positive: overrides eval_every_epochs
  config.eval_ten_crop = False     # the paper's 10 patches per image, softmax averaged (10x the work)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1_000
  config.checkpoint_every_minutes = 30.0  # also save when this long has passed; 0: off
  config.keep_checkpoints = 3       # the newest ones in WORKDIR/checkpoints
  config.keep_best_checkpoint = True  # also keep the lowest-validation-error one in WORKDIR/best
  config.profile_steps = 0         # positive: trace this many steps for TensorBoard's profiler
  config.profile_first_step = 10   # ... starting this many steps into the run
  config.seed = 0
  # Fine-tuning: a workdir (trained here, or imported by `python -m alexnet_jax.commands.weights
  # import`) whose parameters start this run, from its best checkpoint if it keeps one, else
  # its newest. fc8 starts afresh when the class counts differ, and so does every layer named
  # in reinit_layers (comma-separated, e.g. 'fc7,fc8'); the optimiser state starts afresh.
  # A run that has checkpoints of its own resumes from them instead.
  config.init_from = ''
  config.reinit_layers = ''
  # A CPU-only jaxlib on a host with GPUs or TPUs is refused for a real dataset (README,
  # "Install"); true trains on the CPU anyway.
  config.allow_cpu = False

  if variant in ('', 'paper'):
    pass
  elif variant == 'owt':
    _one_weird_trick(config)
  elif variant == 'demo':
    # A narrow single-tower net on generated images, in about a minute on 2 CPU cores. The
    # rate decays to 0 because at a constant rate the error, once fallen, jumps back up
    # between evaluations (README, "Two commands").
    _one_weird_trick(config)
    config.dataset = 'synthetic'
    config.mean_rgb = (127.5, 127.5, 127.5)
    config.width = 0.25
    config.image_size = 64
    config.resize_size = 64
    config.global_batch_size = 64
    config.learning_rate = 0.01
    config.lr_schedule = 'cosine'
    config.num_train_steps = 1600
    config.dtype = 'float32'   # steadier than bfloat16 at this width (BENCHMARKS.md)
    config.eval_every_steps = 200
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
  elif variant == 'imagenette':
    _imagenette(config)
  elif variant == 'claims':
    # The paper's net at the imagenette variant's size, for the table of the paper's claims
    # (README, "The paper's claims"; python -m alexnet_jax.commands.claims): two towers and
    # LRN, raw pixels minus the mean as the paper's inputs, 10 epochs, the rate decaying to 0
    # so that the last evaluation is a settled one. The variant's PyTorch initialisation:
    # with Caffe's the net stays at chance for its first three epochs at this size.
    _imagenette(config)
    config.model = 'paper'
    config.std_rgb = (1.0, 1.0, 1.0)
    config.num_epochs = 10
    config.lr_schedule = 'cosine'
  elif variant == 'torchvision':
    # torchvision's trained AlexNet expects its own transforms: shorter side 256, the centre
    # 224 patch, ToTensor and Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224,
    # 0.225)), here in 0-255 units.
    _one_weird_trick(config)
    config.mean_rgb = (123.675, 116.28, 103.53)
  else:
    raise ValueError(f'Unknown config variant {variant!r}: use paper, owt, demo, imagenette, '
                     'claims or torchvision.')
  return config


def _imagenette(config):
  """Real ImageNet JPEGs, 10 classes, on 2 CPU cores: a half-width single-tower net on 96x96
  patches of 110x110 squares, from the store that
    python -m alexnet_jax.commands.prepare --source=image_folder:../shared/data/imagenette --size=110
  writes (~/alexnet_jax_data/imagenette_110)."""
  _one_weird_trick(config)
  config.dataset = 'imagenette_110'
  config.width = 0.5
  config.image_size = 96
  config.resize_size = 110
  config.global_batch_size = 64
  config.num_epochs = 16
  config.log_every_steps = 50


def _one_weird_trick(config):
  """torchvision's AlexNet: one tower, PyTorch's initialisation, inputs scaled to unit std."""
  config.model = 'owt'
  config.initialization = 'pytorch'
  config.std_rgb = imagenet_color.STD_RGB   # torchvision's
