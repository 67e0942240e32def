"""Ready-made weight-space models built from the UNF layers."""

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._attention import EquivariantAttention
from nfn._equivariant import EquivariantLinear
from nfn._invariant import InvariantLinear
from nfn._pointwise import AbstractDropoutModule, ChannelLayerNorm, FeatureDropout
from nfn._spec import WeightSpace

Norm = Literal["layer"] | None


def _norms(space: WeightSpace, channels: int, count: int, norm: Norm):
    if norm not in ("layer", None):
        raise ValueError(f'norm must be "layer" or None, got {norm!r}')
    if norm is None or count == 0:
        return None
    return tuple(ChannelLayerNorm(space, channels) for _ in range(count))


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _attentions(
    space: WeightSpace, channels: int, count: int, heads: int, head_size: int | None, key
) -> tuple[EquivariantAttention, ...] | None:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
        raise ValueError(f"attention_heads must be an int >= 0, got {heads!r}")
    if heads == 0 or count == 0:
        return None
    size = channels if head_size is None else head_size
    return tuple(
        EquivariantAttention(space, channels, channels, heads=heads, head_size=size, key=k)
        for k in jax.random.split(key, count)
    )


def _dropout_keys(
    dropout: float, inference: bool, key: PRNGKeyArray | None, count: int
) -> list[PRNGKeyArray | None]:
    if inference or dropout == 0.0:
        return [None] * count
    if key is None:
        raise ValueError(
            f"dropout={dropout} needs a `key` at call time unless inference=True (as "
            "eqx.nn.Dropout)"
        )
    return list(jax.random.split(key, count))


def _hidden_blocks(layers, norms, attentions, activation, dropout: float, features, keys):
    """Each of ``layers`` in turn as a hidden block, `layer -> (norm) -> activation -> (dropout,
    when its key is not None) -> (x + attention(x))`, with the norms and attentions of the same
    index (where there are any)."""
    for k, (layer, key) in enumerate(zip(layers, keys)):
        features = layer(features)
        if norms is not None:
            features = norms[k](features)
        features = jax.tree_util.tree_map(activation, features)
        if key is not None:
            features = FeatureDropout(dropout)(features, key=key)
        if attentions is not None:
            features = jax.tree_util.tree_map(jnp.add, features, attentions[k](features))
    return features


def _with_space(layers, space: WeightSpace):
    return None if layers is None else tuple(layer.with_space(space) for layer in layers)


class EquivariantNetwork(AbstractDropoutModule):
    """A stack of equivariant layers: `[EquivariantLinear -> (ChannelLayerNorm) -> act ->
    (dropout) -> (x + EquivariantAttention(x))] x (depth - 1) -> EquivariantLinear`. Maps
    features to features of the same space.
    """

    layers: tuple[EquivariantLinear, ...]
    norms: tuple[ChannelLayerNorm, ...] | None
    attentions: tuple[EquivariantAttention, ...] | None
    activation: Callable[[Array], Array]
    dropout: float = eqx.field(static=True)
    inference: bool = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        depth: int,
        *,
        activation: Callable[[Array], Array] = jax.nn.relu,
        norm: Norm = "layer",
        dropout: float = 0.0,
        inference: bool = False,
        attention_heads: int = 0,
        attention_head_size: int | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `space`: the weight space.
        - `in_channels`, `hidden_channels`, `out_channels`: channels of the input, hidden and
          output features.
        - `depth`: number of equivariant layers (>= 1).
        - `activation`: elementwise activation between layers.
        - `norm`: `"layer"` (default) puts a [`nfn.ChannelLayerNorm`][] after every hidden
          layer (needs `hidden_channels >= 2`); it makes the network blind to the global scale
          of its input at initialisation (`f` and `3 f` give the same output while the biases
          are zero). `None` keeps that scale.
        - `dropout`: probability of [`nfn.FeatureDropout`][] after every hidden activation.
        - `inference`: the default of the call's `inference` flag (no dropout when true).
        - `attention_heads`: `0` (default) for none; otherwise every hidden block ends with a
          residual [`nfn.EquivariantAttention`][] of this many heads (`x + attention(x)`).
        - `attention_head_size`: width of each head (default `hidden_channels`).
        - `key`: PRNG key for the initialisation.
        """
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        _check_dropout(dropout)
        channels = [in_channels] + [hidden_channels] * (depth - 1) + [out_channels]
        # Without attention the initialisation is the same as before attention existed.
        key, attention_key = jax.random.split(key) if attention_heads else (key, None)
        keys = jax.random.split(key, depth)
        self.layers = tuple(
            EquivariantLinear(space, c_in, c_out, key=k)
            for c_in, c_out, k in zip(channels[:-1], channels[1:], keys)
        )
        self.norms = _norms(space, hidden_channels, depth - 1, norm)
        self.attentions = _attentions(
            space, hidden_channels, depth - 1, attention_heads, attention_head_size, attention_key
        )
        self.activation = activation
        self.dropout, self.inference = dropout, inference

    def _forward(
        self, features: PyTree[Float[Array, "..."]], *, key: PRNGKeyArray | None, inference: bool
    ) -> PyTree[Float[Array, "..."]]:
        hidden = self.layers[:-1]
        keys = _dropout_keys(self.dropout, inference, key, len(hidden))
        features = _hidden_blocks(
            hidden, self.norms, self.attentions, self.activation, self.dropout, features, keys
        )
        return self.layers[-1](features)

    def with_space(self, space: WeightSpace) -> "EquivariantNetwork":
        """This network, with the same parameters, on a space of other hidden widths (see
        [`nfn.EquivariantLinear.with_space`][])."""
        layers = tuple(layer.with_space(space) for layer in self.layers)
        norms = _with_space(self.norms, space)
        attentions = _with_space(self.attentions, space)
        return eqx.tree_at(
            lambda m: (m.layers, m.norms, m.attentions),
            self,
            (layers, norms, attentions),
            is_leaf=lambda x: x is None,
        )


class InvariantEncoder(AbstractDropoutModule):
    """A permutation-invariant encoder of one network: `[EquivariantLinear ->
    (ChannelLayerNorm) -> act -> (dropout) -> (x + EquivariantAttention(x))] x depth ->
    InvariantLinear -> act -> (dropout) -> MLP head`.

    With `depth=0` it is `InvariantLinear -> act -> MLP head` on the input features directly.
    """

    equivariant: tuple[EquivariantLinear, ...]
    norms: tuple[ChannelLayerNorm, ...] | None
    attentions: tuple[EquivariantAttention, ...] | None
    invariant: InvariantLinear
    head: tuple[eqx.nn.Linear, ...]
    activation: Callable[[Array], Array]
    dropout: float = eqx.field(static=True)
    inference: bool = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        out_size: int | Literal["scalar"],
        *,
        in_channels: int = 1,
        hidden_channels: int = 16,
        depth: int = 2,
        invariant_features: int = 64,
        head_sizes: Sequence[int] = (64,),
        activation: Callable[[Array], Array] = jax.nn.relu,
        norm: Norm = "layer",
        dropout: float = 0.0,
        inference: bool = False,
        attention_heads: int = 0,
        attention_head_size: int | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `space`: the weight space of the networks to encode.
        - `out_size`: size of the output vector, or `"scalar"` for a scalar output.
        - `in_channels`: channels of the input features (1 for raw parameters).
        - `hidden_channels`, `depth`: width and number of the equivariant layers.
        - `invariant_features`: width of the invariant layer's output.
        - `head_sizes`: hidden widths of the MLP head, any widths (may be empty).
        - `activation`: elementwise activation everywhere.
        - `norm`: `"layer"` (default) puts a [`nfn.ChannelLayerNorm`][] after each equivariant
          layer (needs `hidden_channels >= 2`). It normalises every position's channels, so the
          encoder cannot see the global scale of the weights at initialisation (`f` and `3 f`
          give the same output while the biases are zero), and only through the learned biases
          later. Pass `None` where the weights' scale matters (e.g. predicting a network's
          output magnitude).
        - `dropout`: dropout probability after every hidden activation ([`nfn.FeatureDropout`][]
          on features, `eqx.nn.Dropout` before the head).
        - `inference`: the default of the call's `inference` flag (no dropout when true).
        - `attention_heads`: `0` (default) for none; otherwise every equivariant block ends with
          a residual [`nfn.EquivariantAttention`][] of this many heads (`x + attention(x)`).
        - `attention_head_size`: width of each head (default `hidden_channels`).
        - `key`: PRNG key for the initialisation.
        """
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        _check_dropout(dropout)
        widths = [int(w) for w in head_sizes]
        if any(w < 1 for w in widths):
            raise ValueError(f"head_sizes must be positive, got {list(head_sizes)}")
        key, attention_key = jax.random.split(key) if attention_heads else (key, None)
        keys = jax.random.split(key, depth + 2)
        channels = [in_channels] + [hidden_channels] * depth
        self.equivariant = tuple(
            EquivariantLinear(space, c_in, c_out, key=k)
            for c_in, c_out, k in zip(channels[:-1], channels[1:], keys[:depth])
        )
        self.norms = _norms(space, hidden_channels, depth, norm)
        self.attentions = _attentions(
            space, hidden_channels, depth, attention_heads, attention_head_size, attention_key
        )
        self.invariant = InvariantLinear(space, channels[-1], invariant_features, key=keys[-2])
        # Split like eqx.nn.MLP (one key per layer, the last for the output layer), so equal
        # widths give the same initial head as an eqx.nn.MLP with the same key.
        head_keys = jax.random.split(keys[-1], len(widths) + 1)
        sizes = [invariant_features, *widths]
        self.head = tuple(
            eqx.nn.Linear(n_in, n_out, key=k)
            for n_in, n_out, k in zip(sizes, [*widths, out_size], head_keys)
        )
        self.activation = activation
        self.dropout, self.inference = dropout, inference

    def _forward(
        self, features: PyTree[Float[Array, "..."]], *, key: PRNGKeyArray | None, inference: bool
    ) -> Float[Array, "..."]:
        keys = _dropout_keys(self.dropout, inference, key, len(self.equivariant) + len(self.head))
        features = _hidden_blocks(
            self.equivariant,
            self.norms,
            self.attentions,
            self.activation,
            self.dropout,
            features,
            keys[: len(self.equivariant)],
        )
        x = self.activation(self.invariant(features))
        last = len(self.head) - 1
        for k, (layer, dropout_key) in enumerate(zip(self.head, keys[len(self.equivariant) :])):
            if dropout_key is not None:
                x = eqx.nn.Dropout(self.dropout)(x, key=dropout_key)
            x = layer(x)
            if k < last:
                x = self.activation(x)
        return x

    def with_space(self, space: WeightSpace) -> "InvariantEncoder":
        """This encoder, with the same parameters, on a space of other hidden widths (see
        [`nfn.EquivariantLinear.with_space`][]): an encoder trained on networks of one width
        encodes networks of another."""
        equivariant = tuple(layer.with_space(space) for layer in self.equivariant)
        norms = _with_space(self.norms, space)
        attentions = _with_space(self.attentions, space)
        return eqx.tree_at(
            lambda m: (m.equivariant, m.norms, m.attentions, m.invariant),
            self,
            (equivariant, norms, attentions, self.invariant.with_space(space)),
            is_leaf=lambda x: x is None,
        )


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
