"""Layers that act on features entry by entry (or channel vector by channel vector).

Acting identically at every position of every leaf commutes with any permutation of positions,
so all of these are equivariant.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._basis import default_float, ones, zeros
from nfn._spec import WeightSpace


class Pointwise(eqx.Module):
    """Apply an elementwise function (e.g. `jax.nn.relu`) to every entry of every leaf."""

    fn: Callable[[Array], Array]

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        return jax.tree_util.tree_map(self.fn, features)


class ChannelLayerNorm(eqx.Module):
    """Layer normalisation over the channel axis at every position, with a learned per-leaf,
    per-channel scale and offset.

    Each position's channel vector is centred and scaled to unit variance, so the output does not
    depend on the scale of its input: after a bias-free linear layer, features `f` and `3 f` give
    the same output (up to `eps`). Leave it out where the global scale of a network's weights
    carries information.
    """

    scale: tuple[Float[Array, " channels"], ...]
    offset: tuple[Float[Array, " channels"], ...]
    space: WeightSpace = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, space: WeightSpace, channels: int, *, eps: float = 1e-5, dtype=None):
        if not isinstance(channels, int) or channels < 2:
            raise ValueError(
                f"channels must be an int >= 2 (normalising one channel gives zeros), got "
                f"{channels!r}"
            )
        dtype = default_float(dtype)
        self.space, self.channels, self.eps = space, channels, eps
        self.scale = tuple(ones((channels,), dtype) for _ in space.leaves)
        self.offset = tuple(zeros((channels,), dtype) for _ in space.leaves)

    def with_space(self, space: WeightSpace) -> "ChannelLayerNorm":
        """This layer, with the same parameters, on a space of other hidden widths (see
        [`nfn.WeightSpace.check_transferable_to`][])."""
        self.space.check_transferable_to(space)
        dtype = self.scale[0].dtype if self.scale else None
        shell = ChannelLayerNorm(space, self.channels, eps=self.eps, dtype=dtype)
        return eqx.tree_at(lambda m: (m.scale, m.offset), shell, (self.scale, self.offset))

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        leaves = self.space.flatten(features, channels=True)
        out = []
        for x, scale, offset in zip(leaves, self.scale, self.offset):
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.var(x, axis=-1, keepdims=True)
            out.append((x - mean) * jax.lax.rsqrt(var + self.eps) * scale + offset)
        return self.space.unflatten(out)


class AbstractDropoutModule(eqx.Module):
    """A module whose call may drop features out: the call's `inference` (default: the
    module's own) turns dropout off, and otherwise a `key` drives it (as `eqx.nn.Dropout`)."""

    inference: eqx.AbstractVar[bool]

    def __call__(
        self,
        features: PyTree[Float[Array, "..."]],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> PyTree[Float[Array, "..."]]:
        """Apply the module to one network's features; `key` is needed when dropout is active."""
        inference = self.inference if inference is None else inference
        return self._forward(features, key=key, inference=inference)

    @abc.abstractmethod
    def _forward(
        self, features: PyTree[Float[Array, "..."]], *, key: PRNGKeyArray | None, inference: bool
    ) -> PyTree[Float[Array, "..."]]:
        """The call, with `inference` resolved."""


class FeatureDropout(AbstractDropoutModule):
    """Dropout on every entry of every leaf. Equivariant in distribution.

    Pass `inference=True` (or build with `inference=True`) to disable it; otherwise a `key` is
    required.
    """

    p: float = eqx.field(static=True)
    inference: bool = eqx.field(static=True)

    def __init__(self, p: float = 0.5, *, inference: bool = False):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p, self.inference = p, inference

    def _forward(
        self, features: PyTree[Float[Array, "..."]], *, key: PRNGKeyArray | None, inference: bool
    ) -> PyTree[Float[Array, "..."]]:
        if inference or self.p == 0.0:
            return features
        if key is None:
            raise ValueError("FeatureDropout needs a `key` unless inference=True")
        leaves, treedef = jax.tree_util.tree_flatten(features)
        keys = jax.random.split(key, len(leaves))
        keep = 1.0 - self.p
        out = [
            jnp.where(jax.random.bernoulli(k, keep, x.shape), x / keep, 0.0)
            for k, x in zip(keys, leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)
