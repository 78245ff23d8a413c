"""What the benchmark commands (`alexnet_jax/commands/benchmark*.py`) measure with.

- `clock.py`: wall time, the cores used (this process and its decoding processes) and the
  calling thread's CPU time;
- `photo_like.py`: full-size images whose JPEGs are as large, and decode as slowly, as real
  photos', and a store of them;
- `throughput.py`: images/s of the decoder alone, the loader alone, the train step alone and
  the loop (the loader's batches put on the devices and trained on);
- `gpu_feed.py`: the GPU's JPEG decoders several at once, beside a step, against
  libjpeg-turbo's pixels; `stand_in.py`: a source and a decoder that stand in for them on a
  CPU, their decodes waits without Python's lock;
- `table.py`: a table in Markdown.
They import no TensorFlow, clu or ml_collections: they run on an accelerator host that has
only JAX and the loader's wheels (grain, array_record, simplejpeg).
"""
