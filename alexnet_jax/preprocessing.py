"""The paper's preprocessing of one image (section 4.1), as TensorFlow ops for tf.data.

Train: shorter side to `resize_size` (256), its centre square, a random
`image_size` (224) patch of that square and its horizontal reflection with
probability 1/2, and a PCA colour shift. Eval: the centre patch, or the ten patches of
the paper's test procedure (section 4.1).

The crop window is mapped back to the original image so that only that window
of the JPEG is decoded (`decode_and_crop_jpeg`), then resized to the patch
size: the same patch as resizing first and cropping second, at a fraction of
the decoding work. Grayscale and CMYK JPEGs and other formats (PNG, GIF, BMP)
decode to RGB.

An example is {'image': encoded bytes, 'label': int}. The colour shift is
returned as 'rgb_shift' and added on the device (`parallel.normalize_images`),
so that only uint8 pixels cross to the device.
"""

import tensorflow as tf

def decode_and_crop(image_bytes, window):
  """Decodes only the window that `window(height, width)` -> (y, x, side) chooses."""

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    y, x, side = window(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, side, side]), channels=3)

  def other():  # PNG, GIF, BMP: decode whole, then crop.
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y, x, side = window(tf.shape(image)[0], tf.shape(image)[1])
    return image[y:y + side, x:x + side]

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def paper_window(crop_fraction: float, offset_y, offset_x):
  """The crop, in original pixels, of the patch at offset (offset_y, offset_x) in [0, 1]^2.

  The shorter side s maps to `resize_size`; the patch of `image_size` is then
  a square of side s * crop_fraction inside the centre s x s square.
  """

  def window(height, width):
    s = tf.minimum(height, width)
    side = tf.maximum(1, tf.cast(tf.round(tf.cast(s, tf.float32) * crop_fraction), tf.int32))
    slack = tf.cast(s - side, tf.float32)
    y = (height - s) // 2 + tf.cast(tf.round(slack * offset_y), tf.int32)
    x = (width - s) // 2 + tf.cast(tf.round(slack * offset_x), tf.int32)
    return y, x, side

  return window


def resize_to_uint8(image, size: int):
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def train_example(example_seed, example, config):
  """A random patch, maybe reflected, and its colour shift; all drawn from `example_seed`."""
  offset_seed, flip_seed, light_seed = tf.unstack(
      tf.random.experimental.stateless_split(example_seed, 3))
  offset = tf.random.stateless_uniform([2], offset_seed)
  crop_fraction = config.image_size / config.resize_size
  image = decode_and_crop(example['image'], paper_window(crop_fraction, offset[0], offset[1]))
  image = resize_to_uint8(image, config.image_size)
  image = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5,
                  lambda: tf.reverse(image, axis=[1]), lambda: image)
  batch = {'image': image, 'label': tf.cast(example['label'], tf.int32)}
  if config.pca_lighting_std > 0:
    alpha = tf.random.stateless_normal([3], light_seed, stddev=config.pca_lighting_std)
    eigval = tf.constant(config.pca_eigval, tf.float32)
    eigvec = tf.constant(config.pca_eigvec, tf.float32)   # eigenvectors as columns
    batch['rgb_shift'] = tf.linalg.matvec(eigvec, alpha * eigval)
  return batch


def eval_example(example, config):
  """The centre patch, with mask 1 (padding added to fill the last batch has mask 0)."""
  crop_fraction = config.image_size / config.resize_size
  image = decode_and_crop(example['image'], paper_window(crop_fraction, 0.5, 0.5))
  return {'image': resize_to_uint8(image, config.image_size),
          'label': tf.cast(example['label'], tf.int32),
          'mask': tf.constant(1.0, tf.float32)}


def ten_crop_example(example, config):
  """The paper's test patches: the four corner patches and the centre patch of the centre
  square resized to `resize_size`, and their reflections: 'image' is [10, S, S, 3]."""
  square = resize_to_uint8(decode_and_crop(example['image'], paper_window(1.0, 0.5, 0.5)),
                           config.resize_size)
  slack, size = config.resize_size - config.image_size, config.image_size
  offsets = [(0, 0), (0, slack), (slack, 0), (slack, slack), (slack // 2, slack // 2)]
  patches = tf.stack([square[y:y + size, x:x + size] for y, x in offsets])
  return {'image': tf.concat([patches, tf.reverse(patches, axis=[2])], axis=0),
          'label': tf.cast(example['label'], tf.int32),
          'mask': tf.constant(1.0, tf.float32)}

