"""The commands, apart from the library they run (each: `python -m alexnet_jax.commands.NAME`).

  prepare               a TFDS dataset or an image folder, written once as a 256x256 store
  color_stats           the training set's mean pixel, mean image and RGB principal components
  evaluate_workdirs     top-1/top-5 error of trained workdirs, alone and as an ensemble
  classify              each image's most probable classes, from a trained or imported workdir
  weights               torchvision's AlexNet weights into a workdir, and a workdir's out
  figures               the paper's figures 3 and 4 from a trained workdir
  plot_curves           a workdir's loss and error curves as a PNG
  activation_stats      each layer's outputs and dead units at initialisation and after steps
  benchmark             the training step's images/s, compile time, memory and MFU
  benchmark_loop        the data path: decoding, the loader, the step and the loop
  benchmark_checkpoint  what a save costs the step, a restore, bytes on disk
  benchmark_host        one command that measures an accelerator host

Training itself is `python main.py` at the top of the project.
"""
