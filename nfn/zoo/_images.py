"""28x28 digit images made offline from scikit-learn's 8x8 digits: each image is one source
digit, upsampled with bilinear interpolation under a random affine map, then blurred."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from nfn.zoo._generate import load_digits_split

SIZE = 28


@dataclasses.dataclass(frozen=True)
class AffineDigitsConfig:
    """How [`nfn.zoo.affine_digits`][] draws its images.

    **Fields:**

    - `train`, `val`, `test`: images per split, each a multiple of 10 (every class gets the
      same number).
    - `source_val`, `source_test`: how many of the 1,797 source digits are kept for the
      validation and test images (the rest make the training images), so no split sees
      another split's source digits.
    - `box`: the side, in pixels, of the box the 8x8 source fills before the affine map
      (MNIST puts its digits in a 20x20 box of a 28x28 image).
    - `rotation`: the largest rotation, in degrees (uniform in `[-rotation, rotation]`).
    - `scale`: the range of the scale factor (log-uniform), `shear`: the largest shear
      (uniform), `shift`: the largest translation in pixels (uniform, each axis).
    - `blur`: the Gaussian blur's standard deviation, in pixels.
    - `seed`: splits the sources and draws every image's source and transform.
    """

    train: int = 4000
    val: int = 500
    test: int = 1000
    source_val: int = 200
    source_test: int = 400
    box: float = 20.0
    rotation: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear: float = 0.2
    shift: float = 2.0
    blur: float = 0.6
    seed: int = 0

    def __post_init__(self):
        for name in ("train", "val", "test"):
            count = getattr(self, name)
            if count <= 0 or count % 10:
                raise ValueError(f"AffineDigitsConfig.{name} must be a positive multiple of 10")
        if self.source_val + self.source_test >= 1797 - 100:
            raise ValueError("AffineDigitsConfig.source_val + source_test leave too few sources")


def _transform(
    source: Float[Array, "8 8"],
    key: PRNGKeyArray,
    config: AffineDigitsConfig,
) -> Float[Array, "28 28"]:
    angle_key, scale_key, shear_key, shift_key = jax.random.split(key, 4)
    angle = jnp.deg2rad(config.rotation) * jax.random.uniform(angle_key, minval=-1, maxval=1)
    low, high = np.log(config.scale[0]), np.log(config.scale[1])
    scale = jnp.exp(jax.random.uniform(scale_key, minval=low, maxval=high))
    shear = config.shear * jax.random.uniform(shear_key, minval=-1, maxval=1)
    shift = config.shift * jax.random.uniform(shift_key, (2,), minval=-1, maxval=1)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Output pixel -> source pixel: undo the shift, the rotation, the shear and the scale.
    forward = scale * jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, shear], [0.0, 1.0]])
    inverse = jnp.linalg.inv(forward)
    rows, cols = jnp.meshgrid(jnp.arange(SIZE), jnp.arange(SIZE), indexing="ij")
    centred = jnp.stack([rows.ravel(), cols.ravel()]) - (SIZE - 1) / 2 - shift[:, None]
    # One source pixel spans box / 8 output pixels.
    coords = (inverse @ centred) * (8 / config.box) + 3.5
    image = jax.scipy.ndimage.map_coordinates(source, list(coords), order=1, cval=0.0)
    image = image.reshape(SIZE, SIZE)
    radius = int(np.ceil(3 * config.blur))
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / config.blur) ** 2)
    taps = taps / jnp.sum(taps)
    image = jax.vmap(lambda r: jnp.convolve(r, taps, mode="same"))(image)
    image = jax.vmap(lambda c: jnp.convolve(c, taps, mode="same"), in_axes=1, out_axes=1)(image)
    return jnp.clip(image / jnp.maximum(jnp.max(image), 1e-6), 0.0, 1.0)


def _draw(sources, labels, count, config, key):
    # Exactly count / 10 images per class, each from a random source digit of that class.
    classes = np.tile(np.arange(10), count // 10)
    pick_key, transform_key = jax.random.split(key)
    picks = []
    for digit, k in zip(range(10), jax.random.split(pick_key, 10)):
        members = np.flatnonzero(labels == digit)
        chosen = jax.random.randint(k, (count // 10,), 0, len(members))
        picks.append(members[np.asarray(chosen)])
    index = np.empty(count, int)
    for digit in range(10):
        index[classes == digit] = picks[digit]
    keys = jax.random.split(transform_key, count)
    images = jax.jit(jax.vmap(lambda s, k: _transform(s, k, config)))(
        jnp.asarray(sources[index]), keys
    )
    return images, jnp.asarray(classes, jnp.int32)


def affine_digits(
    config: AffineDigitsConfig | None = None,
) -> dict[str, tuple[Float[Array, "n 28 28"], Int[Array, " n"]]]:
    """A 28x28 digit set from scikit-learn's 8x8 digits (no download): every image is a source
    digit filling a `box`-pixel box, moved by a random rotation, log-uniform scale, shear
    and shift (bilinear interpolation), blurred and rescaled to a maximum of 1. Returns
    `{"train": (images, labels), "val": ..., "test": ...}`, pixels in `[0, 1]`, the classes in
    a repeating `0..9` order (exactly balanced). The same `config` (seed included) gives the
    same images. Needs scikit-learn (`pip install -e ".[zoo]"`)."""
    config = AffineDigitsConfig() if config is None else config
    held_out = config.source_val + config.source_test
    x_train, y_train, x_held, y_held = load_digits_split(held_out, config.seed)
    sources = {
        "train": (x_train[:, 0], y_train),
        "val": (x_held[: config.source_val, 0], y_held[: config.source_val]),
        "test": (x_held[config.source_val :, 0], y_held[config.source_val :]),
    }
    keys = jax.random.split(jax.random.key(config.seed), 3)
    out = {}
    for (split, (x, y)), key in zip(sources.items(), keys):
        missing = set(range(10)) - set(np.unique(y).tolist())
        if missing:
            raise ValueError(f"AffineDigitsConfig: the {split} sources lack digits {missing}")
        out[split] = _draw(x, y, getattr(config, split), config, key)
    return out
