"""Ready-made weight-space models built from the UNF layers."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._equivariant import EquivariantLinear
from nfn._invariant import InvariantLinear
from nfn._pointwise import ChannelLayerNorm
from nfn._spec import WeightSpace


class EquivariantNetwork(eqx.Module):
    """A stack of equivariant layers: `[EquivariantLinear -> (ChannelLayerNorm) -> act] x
    (depth - 1) -> EquivariantLinear`. Maps features to features of the same space."""

    layers: tuple[EquivariantLinear, ...]
    norms: tuple[ChannelLayerNorm, ...] | None
    activation: Callable[[Array], Array]

    def __init__(
        self,
        space: WeightSpace,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        depth: int,
        *,
        activation: Callable[[Array], Array] = jax.nn.relu,
        layer_norm: bool = True,
        key: PRNGKeyArray,
    ):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        channels = [in_channels] + [hidden_channels] * (depth - 1) + [out_channels]
        keys = jax.random.split(key, depth)
        self.layers = tuple(
            EquivariantLinear(space, c_in, c_out, key=k)
            for c_in, c_out, k in zip(channels[:-1], channels[1:], keys)
        )
        self.norms = (
            tuple(ChannelLayerNorm(space, hidden_channels) for _ in range(depth - 1))
            if layer_norm and depth > 1
            else None
        )
        self.activation = activation

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        for k, layer in enumerate(self.layers[:-1]):
            features = layer(features)
            if self.norms is not None:
                features = self.norms[k](features)
            features = jax.tree_util.tree_map(self.activation, features)
        return self.layers[-1](features)


class InvariantEncoder(eqx.Module):
    """A permutation-invariant encoder of one network:
    `[EquivariantLinear -> (ChannelLayerNorm) -> act] x depth -> InvariantLinear -> MLP head`.

    With `depth=0` it is `InvariantLinear -> MLP head` on the input features directly.
    """

    equivariant: tuple[EquivariantLinear, ...]
    norms: tuple[ChannelLayerNorm, ...] | None
    invariant: InvariantLinear
    head: eqx.nn.MLP
    activation: Callable[[Array], Array]

    def __init__(
        self,
        space: WeightSpace,
        out_size: int | str,
        *,
        in_channels: int = 1,
        hidden_channels: int = 16,
        depth: int = 2,
        invariant_features: int = 64,
        head_sizes: Sequence[int] = (64,),
        activation: Callable[[Array], Array] = jax.nn.relu,
        layer_norm: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `space`: the weight space of the networks to encode.
        - `out_size`: size of the output vector, or `"scalar"` for a scalar output.
        - `in_channels`: channels of the input features (1 for raw parameters).
        - `hidden_channels`, `depth`: width and number of the equivariant layers.
        - `invariant_features`: width of the invariant layer's output.
        - `head_sizes`: hidden widths of the MLP head (may be empty).
        - `activation`: elementwise activation everywhere.
        - `layer_norm`: channel layer norm after each equivariant layer (needs
          `hidden_channels >= 2`).
        """
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        widths = list(head_sizes)
        if len(set(widths)) > 1:
            raise ValueError(f"head_sizes must all be equal (an eqx.nn.MLP), got {widths}")
        keys = jax.random.split(key, depth + 2)
        channels = [in_channels] + [hidden_channels] * depth
        self.equivariant = tuple(
            EquivariantLinear(space, c_in, c_out, key=k)
            for c_in, c_out, k in zip(channels[:-1], channels[1:], keys[:depth])
        )
        self.norms = (
            tuple(ChannelLayerNorm(space, hidden_channels) for _ in range(depth))
            if layer_norm and depth > 0
            else None
        )
        self.invariant = InvariantLinear(space, channels[-1], invariant_features, key=keys[-2])
        self.head = eqx.nn.MLP(
            invariant_features,
            out_size,
            width_size=widths[0] if widths else invariant_features,
            depth=len(widths),
            activation=activation,
            key=keys[-1],
        )
        self.activation = activation

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> Float[Array, "..."]:
        for k, layer in enumerate(self.equivariant):
            features = layer(features)
            if self.norms is not None:
                features = self.norms[k](features)
            features = jax.tree_util.tree_map(self.activation, features)
        return self.head(self.activation(self.invariant(features)))


class StatisticsFeaturizer(eqx.Module):
    """The statistics baseline: per leaf and channel, mean, variance and quantiles.

    Invariant to every permutation of each leaf's entries (a superset of the weight space's
    symmetry), so it cannot see how leaves are wired together.
    """

    space: WeightSpace = eqx.field(static=True)
    quantiles: tuple[float, ...] = eqx.field(static=True)

    def __init__(
        self, space: WeightSpace, quantiles: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    ):
        quantiles = tuple(float(q) for q in quantiles)
        if any(not 0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
        self.space, self.quantiles = space, quantiles

    @property
    def statistics_per_leaf(self) -> int:
        return 2 + len(self.quantiles)

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> Float[Array, " stats"]:
        leaves = self.space.flatten(features, channels=True)
        stats = []
        for x in leaves:
            flat = x.reshape(-1, x.shape[-1])
            stats += [jnp.mean(flat, axis=0), jnp.var(flat, axis=0)]
            if self.quantiles:
                stats += list(jnp.quantile(flat, jnp.asarray(self.quantiles), axis=0))
        return jnp.concatenate(stats)
