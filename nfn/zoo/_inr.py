"""SIREN implicit neural representations of images: one network per image, fitted in one
vmapped program, and decoded back to pixels.

Convention (what a stored SIREN's weights mean):

- the network is an `eqx.nn.MLP(2, 1, width, depth, activation=jnp.sin)`: a pixel's
  coordinates `(row, column)`, each scaled to `[-1, 1]`, in; its value minus `OFFSET` out;
- the frequency `omega0` is folded into the weights (stored weights are the effective ones, so
  `sin(W x + b)` with no hidden factor, as the weight space sees them). At initialisation the
  first layer is `omega0 * U(-1/2, 1/2)` (fan-in 2) and every later hidden layer
  `U(-sqrt(6/fan_in), sqrt(6/fan_in))` (Sitzmann et al.'s `U(+-sqrt(6/n)/omega0)` times the
  folded `omega0`); the last layer is `U(-sqrt(6/fan_in)/omega0, sqrt(6/fan_in)/omega0)`. The
  biases are `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (Equinox's default, `bias_init="uniform"`,
  the default) or zero (`bias_init="zero"`, as DWSNets' SIRENs start: no initialisation noise
  in the biases, which say nothing about the image);
- a pixel's value is `network(coordinates)[0] + OFFSET`, with `OFFSET = 0.5` for pixels in
  `[0, 1]` (so the fit starts near mid-grey).
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

OFFSET = 0.5


BiasInit = Literal["uniform", "zero"]


def siren(
    *,
    width: int = 16,
    depth: int = 2,
    omega0: float = 10.0,
    bias_init: BiasInit = "uniform",
    key: PRNGKeyArray,
) -> eqx.nn.MLP:
    """A SIREN at initialisation (see the module's convention): biases Equinox's uniform
    default (`bias_init="uniform"`) or zero (`"zero"`)."""
    if bias_init not in ("uniform", "zero"):
        raise ValueError(f"bias_init must be 'uniform' or 'zero', not {bias_init!r}")
    model = eqx.nn.MLP(2, 1, width, depth, activation=jnp.sin, key=key)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(model.layers))
    weights = []
    for k, layer in enumerate(model.layers):
        fan_in = layer.weight.shape[1]
        if k == 0:
            bound = omega0 / fan_in
        elif k < len(model.layers) - 1:
            bound = (6.0 / fan_in) ** 0.5
        else:
            bound = (6.0 / fan_in) ** 0.5 / omega0
        weights.append(jax.random.uniform(keys[k], layer.weight.shape, minval=-bound, maxval=bound))
    model = eqx.tree_at(lambda m: [layer.weight for layer in m.layers], model, weights)
    if bias_init == "zero":
        biases = [jnp.zeros_like(layer.bias) for layer in model.layers]
        model = eqx.tree_at(lambda m: [layer.bias for layer in m.layers], model, biases)
    return model


def transform_siren(
    model: PyTree,
    *,
    rotation: Float[ArrayLike, ""] = 0.0,
    scale: Float[ArrayLike, ""] = 1.0,
    translation: Float[ArrayLike, " 2"] | tuple[float, float] = (0.0, 0.0),
) -> PyTree:
    """The SIREN of the image whose coordinates are moved: `transform_siren(f)(x) = f(scale *
    R x + translation)`, with `R` the rotation by `rotation` radians of the `(row, column)`
    plane (`[[cos, -sin], [sin, cos]]`) and `translation` in the grid's units (the image spans
    `[-1, 1]` on each axis). Exact in weight space: only the first layer changes (`W0 -> scale
    * W0 R`, `b0 -> b0 + W0 translation`), every later layer is left as it is. Decoded, the new
    SIREN shows the image rotated, zoomed and shifted (what lies outside the old image is
    whatever the SIREN extrapolates).

    `model` is one SIREN (see the module's convention), as an `eqx.nn.MLP` or its array
    leaves (`eqx.filter(model, eqx.is_array)`); for a batch, `jax.vmap`.
    """
    first = model.layers[0]
    angle = jnp.asarray(rotation, first.weight.dtype)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotate = jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])
    shift = jnp.asarray(translation, first.weight.dtype)
    weight = jnp.asarray(scale, first.weight.dtype) * (first.weight @ rotate)
    bias = first.bias + first.weight @ shift
    return eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), model, (weight, bias))


def augment_siren(
    model: PyTree,
    *,
    rotation: float = 45.0,
    scale: float = 0.2,
    translation: float = 0.25,
    key: PRNGKeyArray,
) -> PyTree:
    """[`nfn.zoo.transform_siren`][] by a random transform, as DWSNets augments its INRs: an
    angle uniform in `[-rotation, rotation]` degrees, a scale uniform in `[1 - scale, 1 +
    scale]` and a translation uniform in `[-translation, translation]` on each axis (grid
    units: the image spans 2). Zero for any of them leaves it out. For a batch, `jax.vmap`
    over keys and SIRENs."""
    angle_key, scale_key, shift_key = jax.random.split(key, 3)
    angle = jnp.deg2rad(rotation) * jax.random.uniform(angle_key, minval=-1.0, maxval=1.0)
    factor = 1.0 + scale * jax.random.uniform(scale_key, minval=-1.0, maxval=1.0)
    shift = translation * jax.random.uniform(shift_key, (2,), minval=-1.0, maxval=1.0)
    return transform_siren(model, rotation=angle, scale=factor, translation=shift)


def pixel_grid(height: int, width: int) -> Float[Array, "pixels 2"]:
    """Every pixel's `(row, column)` scaled to `[-1, 1]`, row-major."""
    rows, cols = jnp.meshgrid(
        jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij"
    )
    return jnp.stack([rows.ravel(), cols.ravel()], axis=-1)


def decode(model: eqx.nn.MLP, height: int, width: int) -> Float[Array, "height width"]:
    """The image a SIREN represents, at `height x width` pixels."""
    values = jax.vmap(model)(pixel_grid(height, width))[:, 0] + OFFSET
    return values.reshape(height, width)


def fit_sirens(
    images: Float[Array, "n height width"],
    *,
    steps: int = 500,
    learning_rate: float = 1e-2,
    width: int = 16,
    depth: int = 2,
    omega0: float = 10.0,
    shared_init: bool = True,
    bias_init: BiasInit = "uniform",
    key: PRNGKeyArray,
) -> tuple[eqx.nn.MLP, Float[Array, " n"]]:
    """Fit one SIREN to each image (full-batch Adam on the squared error of all pixels, every
    image in one vmapped program); returns the stacked SIRENs (every array leaf with a
    leading axis of length `n`) and each fit's final mean squared error.

    With `shared_init=True` (default) every fit starts from the same initialisation (`key`),
    so the weights differ only by what each image needs; with `False` each image draws its
    own. With independent initialisations the differences between initialisations dominate
    the weights: classifying digits from such weights was at chance in
    `examples/inr_classification.py`, for 8x8 and for 28x28 images (see the docs' weight-space
    tasks). `bias_init` is [`nfn.zoo.siren`][]'s: `"zero"` starts every bias at zero.
    """
    n, height, width_px = images.shape
    coords = pixel_grid(height, width_px)
    static = eqx.filter(
        siren(width=width, depth=depth, omega0=omega0, bias_init=bias_init, key=key),
        eqx.is_array,
        inverse=True,
    )

    def fit(key, image):
        init = siren(width=width, depth=depth, omega0=omega0, bias_init=bias_init, key=key)
        params = eqx.filter(init, eqx.is_array)
        target = image.ravel() - OFFSET

        def loss(params):
            out = jax.vmap(eqx.combine(params, static))(coords)[:, 0]
            return jnp.mean((out - target) ** 2)

        def step(carry, t):
            params, mu, nu = carry
            value, grads = jax.value_and_grad(loss)(params)
            mu = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, mu, grads)
            nu = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g**2, nu, grads)
            scale = learning_rate * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            params = jax.tree.map(
                lambda p, m, v: p - scale * m / (jnp.sqrt(v) + 1e-8), params, mu, nu
            )
            return (params, mu, nu), value

        zeros = jax.tree.map(jnp.zeros_like, params)
        ts = jnp.arange(1, steps + 1, dtype=jnp.float32)
        (params, _, _), _ = jax.lax.scan(step, (params, zeros, zeros), ts)
        return params, loss(params)

    keys = jnp.stack([key] * n) if shared_init else jax.random.split(key, n)
    params, errors = jax.jit(jax.vmap(fit))(keys, images)
    return eqx.combine(params, static), errors


def psnr(mse: Float[Array, "*batch"] | np.ndarray | float, peak: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of reconstructions with mean squared errors `mse`, for
    pixels spanning `peak` (1 for pixels in `[0, 1]`); an exact fit (`mse == 0`) gives
    `inf`."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.asarray(10.0 * np.log10(peak**2 / mse))
