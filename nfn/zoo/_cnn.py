"""The zoo's small CNN and its weight space."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from nfn._derive import weight_space
from nfn._spec import NeuronSymmetry, WeightSpace

Activation = Literal["relu", "tanh"]
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh")


class ZooCNN(eqx.Module):
    """The zoo's CNN: `conv 3x3 (valid) -> act -> conv 3x3 (valid) -> act -> global average
    pool -> linear`.

    On an 8x8 digit the feature maps are 6x6 and 4x4. The activation is a hyperparameter of
    each network in a zoo, not part of its parameters, so networks with different activations
    stack into one pytree; pass it to the call.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(
        self,
        *,
        in_channels: int = 1,
        channels: int = 8,
        num_classes: int = 10,
        kernel_size: int = 3,
        key: PRNGKeyArray,
    ):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(in_channels, channels, kernel_size, key=k1)
        self.conv2 = eqx.nn.Conv2d(channels, channels, kernel_size, key=k2)
        self.head = eqx.nn.Linear(channels, num_classes, key=k3)

    def __call__(
        self, x: Float[Array, "c h w"], *, activation: Activation = "relu"
    ) -> Float[Array, " classes"]:
        """Logits for one image `(channels, height, width)`."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        return _logits(self, x[None], jnp.asarray(activation == "tanh"), 0.0, None)[0]


def _logits(
    model: ZooCNN,
    x: Float[Array, "batch c h w"],
    use_tanh: Array,
    dropout: float | Array,
    key: PRNGKeyArray | None,
) -> Float[Array, "batch classes"]:
    """The forward pass on a batch, with the activation and dropout rate as data, so that one
    vmapped program trains networks with different hyperparameters (both activations are
    computed and one is selected: cheap at this size, and it avoids a branch per network)."""

    def act(h):
        return jnp.where(use_tanh, jnp.tanh(h), jax.nn.relu(h))

    def drop(h, k):
        # Channel dropout: a whole feature map per image, so one random number per channel
        # instead of one per pixel (drawing those dominated the training step's time).
        if k is None:
            return h
        keep = 1.0 - dropout
        mask = jax.random.bernoulli(k, keep, (h.shape[0], 1, 1, h.shape[-1]))
        return jnp.where(mask, h / keep, 0.0)

    keys = (None, None) if key is None else tuple(jax.random.split(key))
    h = jnp.moveaxis(x, 1, -1)  # channels last: the convolutions below are matrix products
    h = drop(act(_conv(model.conv1, h)), keys[0])
    h = drop(act(_conv(model.conv2, h)), keys[1])
    return jax.vmap(model.head)(jnp.mean(h, axis=(1, 2)))


def _conv(conv: eqx.nn.Conv2d, x: Float[Array, "batch h w c"]) -> Float[Array, "batch h2 w2 o"]:
    """`conv` (stride 1, unpadded, ungrouped `eqx.nn.Conv2d`) on a channels-last batch, as
    one matrix product of image patches with the flattened kernel. Vmapped over networks this
    is a batched matrix product; XLA's CPU convolution with a different kernel per network (a
    grouped convolution) is several times slower at this size."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    windows = [x[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)]
    # (batch, h2, w2, c, kh * kw): flattened in the kernel's own (c, kh, kw) order.
    patches = jnp.stack(windows, axis=-1).reshape(*x.shape[:1], out_h, out_w, -1)
    kernel = conv.weight.reshape(out_channels, in_channels * kh * kw)
    return patches @ kernel.T + conv.bias.reshape(out_channels)


def _describe(model: ZooCNN) -> eqx.nn.Sequential:
    # The same computation written with modules `nfn.weight_space` knows. The activation does
    # not matter (relu and tanh are both elementwise), and global average pooling acts on
    # every channel alone, so the channels of conv2 and the head's inputs share one id.
    return eqx.nn.Sequential(
        [
            model.conv1,
            eqx.nn.Lambda(jax.nn.relu),
            model.conv2,
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.AdaptiveAvgPool2d(1),
            model.head,
        ]
    )


def cnn_space(
    model: ZooCNN,
    *,
    io: Literal["fixed", "permuted"] = "fixed",
    activation: Activation | None = None,
) -> WeightSpace:
    """The weight space of a [`nfn.zoo.ZooCNN`][] (`eqx.filter(model, eqx.is_array)`).

    `io="fixed"` (the true symmetry, "HNP"): the 8 channels of each conv are permuted, the
    input channel and the 10 classes are fixed. `io="permuted"` ("NP") also permutes them.

    The activation is not part of a `ZooCNN`, so the space records the hidden channels' sign or
    scale symmetry ([`nfn.NeuronSymmetry`][]) only when `activation` is given: `"relu"`
    (positively homogeneous) or `"tanh"` (odd); with `None` (default) they are `"none"`.
    """
    space = weight_space(model, io=io, hooks={ZooCNN: _describe})
    return with_activation_symmetry(space, activation)


def with_activation_symmetry(space: WeightSpace, activation: str | None) -> WeightSpace:
    """`space` (derived with relu standing in for the activation) with the symmetry records of
    its hidden channels set for `activation` ("relu", "tanh" or None: unknown)."""
    if activation not in (*ACTIVATIONS, None):
        raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")
    kind = {"relu": "homogeneous", "tanh": "odd", None: "none"}[activation]
    records = [
        NeuronSymmetry(r.id, "none")
        if kind == "none"
        else NeuronSymmetry(r.id, kind, r.incoming, r.outgoing)
        for r in space.symmetries
        if r.kind != "none"
    ]
    return space.with_symmetries(*records)
