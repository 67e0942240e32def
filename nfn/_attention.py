"""Permutation-equivariant self-attention over the neurons of each permutation id."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._basis import (
    LETTERS,
    check_positive_ints,
    default_float,
    expand_partition,
    fold_features,
    normal_arrays,
    unfold,
    with_parameters,
)
from nfn._partitions import Partition
from nfn._spec import LeafSpace, WeightSpace


@dataclasses.dataclass(frozen=True)
class Piece:
    """One way a leaf is read as (and written from) one vector per neuron of id `pid`.

    `positions` are positions among the leaf's permuted axes, all of id `pid`: one axis, or
    (for a tie) the diagonal over all of the leaf's axes of that id. The other permuted axes are
    averaged when reading and broadcast when writing.
    """

    leaf: int
    pid: int
    positions: tuple[int, ...]


def _pieces(space: WeightSpace) -> tuple[Piece, ...]:
    pieces = []
    for index, leaf in enumerate(space.leaves):
        ids = leaf.permuted_ids
        for pid in dict.fromkeys(ids):
            positions = tuple(k for k, g in enumerate(ids) if g == pid)
            pieces += [Piece(index, pid, (k,)) for k in positions]
            if len(positions) > 1:
                pieces.append(Piece(index, pid, positions))
    return tuple(pieces)


def _read_subscripts(leaf: LeafSpace, piece: Piece) -> tuple[str, float]:
    """Einsum input subscripts that read `piece` as axis `a`, and the averaging scale."""
    spare = iter(LETTERS[1:])
    letters = "".join(
        "a" if k in piece.positions else next(spare) for k in range(len(leaf.permuted_ids))
    )
    others = [n for k, n in enumerate(leaf.permuted_shape) if k not in piece.positions]
    return letters, 1.0 / math.prod(others)


def _write_partition(leaf: LeafSpace, piece: Piece) -> Partition:
    """The piece's positions as one block, every other permuted axis its own block."""
    blocks = [piece.positions] + [
        (k,) for k in range(len(leaf.permuted_ids)) if k not in piece.positions
    ]
    return tuple(sorted(blocks))


def _parameters(layer: "EquivariantAttention") -> tuple:
    return (
        layer.read_weights,
        layer.query_weights,
        layer.key_weights,
        layer.value_weights,
        layer.write_weights,
    )


class EquivariantAttention(eqx.Module):
    """Multi-head self-attention over the neurons of each permutation id, for any weight space.

    For every id `g` (with `n_g` neurons) the layer builds one token per neuron: for every leaf
    axis carrying `g`, the leaf's folded features (fixed axes and channels flattened together)
    averaged over the leaf's other permuted axes, and for a leaf with several axes of `g` (a
    tie) also the mean of its diagonal over those axes; the pieces of all leaves are
    concatenated and projected to `heads * head_size`. The `n_g` tokens attend to each other
    (softmax attention, no positional encoding), and each neuron's attended vector is mapped
    back, by one linear map per piece, onto every entry of every leaf that the neuron indexes
    (broadcast along the other permuted axes; onto the diagonal for a tie's piece).

    Tokens of one id attend only to each other. Without positions, attention commutes with
    any reordering of the tokens, and reading and writing only average and broadcast, so the
    layer is exactly equivariant to every permutation in the space (ties included). Leaves
    with no permuted axis get zeros. The layer has no residual connection of its own; the
    models add one (`x + attention(x)`, see `attention_heads` in [`nfn.EquivariantNetwork`][]).

    Parameters do not depend on the sizes of permuted axes (reading averages), so
    [`with_space`][nfn.EquivariantAttention.with_space] moves the layer to other hidden widths.
    Acts on the features of one network; `vmap` for batches. The cost is in the specs guide's
    [cost model](../guide/specs.md#cost-model).
    """

    read_weights: tuple[Float[Array, "token_width model"], ...]
    query_weights: tuple[Float[Array, "model model"], ...]
    key_weights: tuple[Float[Array, "model model"], ...]
    value_weights: tuple[Float[Array, "model model"], ...]
    write_weights: tuple[Float[Array, "model fan_out"], ...]
    space: WeightSpace = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    head_size: int = eqx.field(static=True)
    normalize_tokens: bool = eqx.field(static=True)
    pieces: tuple[Piece, ...] = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        in_channels: int,
        out_channels: int,
        *,
        heads: int = 1,
        head_size: int = 16,
        normalize_tokens: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `space`: the weight space (input and output).
        - `in_channels`, `out_channels`: channels of the input and output features.
        - `heads`, `head_size`: attention heads and the width of each; tokens have
          `heads * head_size` entries.
        - `normalize_tokens`: layer-normalise every token (no learned scale) before the query,
          key and value maps, so attention logits stay of order one whatever the input scale.
          The output then does not see the input's global scale; a residual connection does.
        - `dtype`: parameter dtype (default: JAX's default float).
        - `key`: PRNG key for the initialisation.
        """
        check_positive_ints(
            in_channels=in_channels, out_channels=out_channels, heads=heads, head_size=head_size
        )
        dtype = default_float(dtype)
        self.space, self.in_channels, self.out_channels = space, in_channels, out_channels
        self.heads, self.head_size = heads, head_size
        self.normalize_tokens = bool(normalize_tokens)
        self.pieces = _pieces(space)
        model = heads * head_size
        ids = space.ids
        widths = {pid: 0 for pid in ids}
        writes_into = [0] * len(space.leaves)
        for piece in self.pieces:
            widths[piece.pid] += space.leaves[piece.leaf].fixed_size * in_channels
            writes_into[piece.leaf] += 1
        shapes, stds = [], []
        for pid in ids:
            shapes.append((widths[pid], model))
            stds.append(1.0 / math.sqrt(widths[pid]))
        shapes += [(model, model)] * (3 * len(ids))
        stds += [1.0 / math.sqrt(model)] * (3 * len(ids))
        for piece in self.pieces:
            leaf = space.leaves[piece.leaf]
            shapes.append((model, leaf.fixed_size * out_channels))
            stds.append(1.0 / math.sqrt(model * writes_into[piece.leaf]))
        arrays = normal_arrays(key, tuple(shapes), tuple(stds), dtype)
        n = len(ids)
        self.read_weights = tuple(arrays[:n])
        self.query_weights = tuple(arrays[n : 2 * n])
        self.key_weights = tuple(arrays[2 * n : 3 * n])
        self.value_weights = tuple(arrays[3 * n : 4 * n])
        self.write_weights = tuple(arrays[4 * n :])

    def with_space(self, space: WeightSpace) -> "EquivariantAttention":
        """This layer, with the same parameters, on a space of other hidden widths (see
        [`nfn.WeightSpace.check_transferable_to`][])."""
        self.space.check_transferable_to(space)
        return with_parameters(
            self,
            lambda key: EquivariantAttention(
                space,
                self.in_channels,
                self.out_channels,
                heads=self.heads,
                head_size=self.head_size,
                normalize_tokens=self.normalize_tokens,
                dtype=self.write_weights[0].dtype if self.write_weights else None,
                key=key,
            ),
            _parameters,
        )

    @property
    def model_size(self) -> int:
        """Width of a token: `heads * head_size`."""
        return self.heads * self.head_size

    def _fold(self, features) -> list[Array]:
        return fold_features(self.space, features, self.in_channels)

    def tokens(self, features: PyTree[Float[Array, "..."]]) -> dict[int, Array]:
        """The tokens before projection: for each id, one row per neuron (pieces concatenated
        in the order of `pieces`)."""
        return self._tokens(self._fold(features))

    def _tokens(self, folded: list[Array]) -> dict[int, Array]:
        parts: dict[int, list[Array]] = {pid: [] for pid in self.space.ids}
        for piece in self.pieces:
            leaf = self.space.leaves[piece.leaf]
            letters, scale = _read_subscripts(leaf, piece)
            parts[piece.pid].append(scale * jnp.einsum(f"{letters}y->ay", folded[piece.leaf]))
        return {pid: jnp.concatenate(p, axis=-1) for pid, p in parts.items()}

    def _attend(self, k: int, tokens: Float[Array, "n width"]) -> Float[Array, "n model"]:
        x = tokens @ self.read_weights[k]
        if self.normalize_tokens:
            mean = jnp.mean(x, axis=-1, keepdims=True)
            x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)
        n = x.shape[0]
        split = (n, self.heads, self.head_size)
        q = (x @ self.query_weights[k]).reshape(split)
        key = (x @ self.key_weights[k]).reshape(split)
        v = (x @ self.value_weights[k]).reshape(split)
        logits = jnp.einsum("ihd,jhd->hij", q, key) / math.sqrt(self.head_size)
        weights = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("hij,jhd->ihd", weights, v).reshape(n, self.model_size)

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        """Map features of `space` (channels `in_channels`) to features with `out_channels`."""
        folded = self._fold(features)
        tokens = self._tokens(folded)
        attended = {pid: self._attend(k, tokens[pid]) for k, pid in enumerate(self.space.ids)}
        totals: list = [None] * len(self.space.leaves)
        for piece, weight in zip(self.pieces, self.write_weights):
            leaf = self.space.leaves[piece.leaf]
            partition = _write_partition(leaf, piece)
            values = attended[piece.pid] @ weight
            shape = tuple(values.shape[0] if block == piece.positions else 1 for block in partition)
            sizes = tuple(leaf.permuted_shape[block[0]] for block in partition)
            written = expand_partition(
                partition, sizes, values.reshape(*shape, -1), len(leaf.permuted_ids)
            )
            totals[piece.leaf] = (
                written if totals[piece.leaf] is None else totals[piece.leaf] + written
            )
        outputs = []
        for leaf, total, x in zip(self.space.leaves, totals, folded):
            if total is None:
                width = leaf.fixed_size * self.out_channels
                total = jnp.zeros((*leaf.permuted_shape, width), x.dtype)
            outputs.append(unfold(leaf, total))
        return self.space.unflatten(outputs)
