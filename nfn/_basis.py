"""The shared machinery of the UNF layers: folding fixed axes, pooling, and diagonal embedding.

Layers work on leaves in a *folded* layout: the permuted axes first, in their original order,
then one channel axis that holds the fixed axes and the channels (`fixed_size * channels`). Fixed
axes are never permuted, so a map may mix them densely like channels; folding makes fully
permuted (NP), fixed-input/output (HNP) and conv-kernel specs one mechanism.
"""

import dataclasses
import math
import string
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from nfn._partitions import Partition, id_partitions
from nfn._spec import LeafSpace, WeightSpace

LETTERS = string.ascii_lowercase

Layer = TypeVar("Layer", bound=eqx.Module)


def fold(leaf: LeafSpace, x: Float[Array, "*shape channels"]) -> Float[Array, "*permuted folded"]:
    """`leaf.shape + (C,)` to `permuted_shape + (fixed_size * C,)`."""
    order = (*leaf.permuted_positions, *leaf.fixed_positions, len(leaf.shape))
    x = jnp.transpose(x, order)
    return x.reshape((*leaf.permuted_shape, -1))


def fold_features(space: WeightSpace, features, in_channels: int) -> list[Array]:
    """Every leaf of `features` folded (`fold`), after checking its channel count."""
    leaves = space.flatten(features, channels=True)
    if leaves and leaves[0].shape[-1] != in_channels:
        raise ValueError(
            f"features have {leaves[0].shape[-1]} channels, layer expects {in_channels}"
        )
    return [fold(leaf, x) for leaf, x in zip(space, leaves)]


def unfold(leaf: LeafSpace, y: Float[Array, "*permuted folded"]) -> Float[Array, "*shape channels"]:
    """Inverse of `fold`."""
    fixed_shape = tuple(leaf.shape[k] for k in leaf.fixed_positions)
    y = y.reshape((*leaf.permuted_shape, *fixed_shape, -1))
    order = (*leaf.permuted_positions, *leaf.fixed_positions, len(leaf.shape))
    return jnp.transpose(y, np.argsort(order))


def block_sizes(leaf: LeafSpace, partition: Partition) -> tuple[int, ...]:
    return tuple(leaf.permuted_shape[block[0]] for block in partition)


def subscripts(partition: Partition, letters: list[str], num_axes: int) -> str:
    """Einsum subscripts of a leaf's permuted axes: axes in one block share that block's letter."""
    out = [""] * num_axes
    for block, letter in zip(partition, letters):
        for position in block:
            out[position] = letter
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class PooledStatistic:
    """Diagonal of one partition of a leaf's permuted axes, averaged over every block."""

    leaf: int
    subscripts: str
    scale: float


@dataclasses.dataclass(frozen=True)
class Pooling:
    """Every invariant pooled statistic of a weight space: the complete basis of invariant maps.

    For every leaf and every partition of its permuted axes (blocks of one id), the mean over
    the partition's diagonal. Each statistic is a vector of the leaf's folded channels.
    """

    statistics: tuple[PooledStatistic, ...]
    widths: tuple[int, ...]

    @classmethod
    def of(cls, space: WeightSpace, channels: int) -> "Pooling":
        statistics, widths = [], []
        for index, leaf in enumerate(space.leaves):
            for partition in id_partitions(leaf.permuted_ids):
                letters = list(LETTERS[: len(partition)])
                sub = subscripts(partition, letters, len(leaf.permuted_ids))
                scale = 1.0 / math.prod(block_sizes(leaf, partition))
                statistics.append(PooledStatistic(index, sub, scale))
                widths.append(leaf.fixed_size * channels)
        return cls(tuple(statistics), tuple(widths))

    @property
    def width(self) -> int:
        return sum(self.widths)

    def __call__(self, folded: list[Float[Array, "..."]]) -> Float[Array, " width"]:
        pooled = [
            jnp.einsum(f"{stat.subscripts}y->y", folded[stat.leaf]) * stat.scale
            for stat in self.statistics
        ]
        return jnp.concatenate(pooled)


def diag_embed(x: Float[Array, "..."], axis: int, copies: int) -> Float[Array, "..."]:
    """Replace axis `axis` (size n) by `copies` axes of size n holding `x` on their diagonal.

    The diagonal of a row-major `(n,)*copies` block is every `stride`-th entry of its flattening,
    so this is one interior pad (`stride - 1` zeros between entries) and a reshape: no index
    tensor, no scatter, and the backward pass is a strided slice that reads only the diagonal.
    """
    if copies == 1:
        return x
    n = x.shape[axis]
    stride = 1 if n == 1 else (n**copies - 1) // (n - 1)
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (0, 0, stride - 1)
    diagonal = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    return diagonal.reshape((*x.shape[:axis], *(n,) * copies, *x.shape[axis + 1 :]))


def expand_partition(
    partition: Partition,
    sizes: tuple[int, ...],
    values: Float[Array, "*blocks channels"],
    num_axes: int,
) -> Float[Array, "*permuted channels"]:
    """Write per-block values onto a leaf's permuted axes.

    `values` has one axis per block (size 1 to broadcast along that block, or the block's size)
    and a trailing channel axis. Output axes in one block receive the diagonal; the result has the
    leaf's folded layout.
    """
    values = jnp.broadcast_to(values, (*sizes, values.shape[-1]))
    axis = 0
    for block in partition:
        values = diag_embed(values, axis, len(block))
        axis += len(block)
    positions = [position for block in partition for position in block]
    order = (*np.argsort(positions), num_axes)
    return jnp.transpose(values, order)


_CHUNK = 1 << 14


def normal_arrays(
    key, shapes: tuple[tuple[int, ...], ...], stds: tuple[float | np.ndarray, ...], dtype
) -> list[Array]:
    """Independent `N(0, std^2)` arrays of the given shapes (a `std` may be an array that
    broadcasts against its shape).

    Draws fixed-size chunks and slices them on the host: every eager JAX call compiles once per
    shape, and layers have many small parameter arrays of varied shapes, so drawing each
    directly would compile (slowly, on CPU) once per array shape.
    """
    total = sum(math.prod(shape) for shape in shapes)
    chunks = [
        jax.random.normal(jax.random.fold_in(key, k), (_CHUNK,), dtype)
        for k in range(-(-total // _CHUNK))
    ]
    # Under a trace (jit, eval_shape) the chunks are tracers: slice them with jnp instead.
    xp = jnp if any(isinstance(c, jax.core.Tracer) for c in chunks) else np
    flat = xp.concatenate([xp.asarray(c) for c in chunks]) if chunks else xp.zeros((0,), dtype)
    arrays, offset = [], 0
    for shape, std in zip(shapes, stds):
        size = math.prod(shape)
        arrays.append(jnp.asarray(std * flat[offset : offset + size].reshape(shape)))
        offset += size
    return arrays


def zeros(shape: tuple[int, ...], dtype) -> Array:
    """Host-made zeros (an eager `jnp.zeros` compiles once per shape)."""
    return jnp.asarray(np.zeros(shape, dtype))


def ones(shape: tuple[int, ...], dtype) -> Array:
    return jnp.asarray(np.ones(shape, dtype))


def default_float(dtype):
    """`dtype`, or JAX's default float dtype (float64 when x64 is enabled)."""
    return jnp.dtype(jnp.zeros(()).dtype if dtype is None else dtype)


def check_positive_ints(**values: Any) -> None:
    """Raise a ValueError naming the first of `values` that is not a positive int (a bool is
    not one)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def with_parameters(
    layer: Layer, build: Callable[[PRNGKeyArray], Layer], parameters: Callable[[Layer], Any]
) -> Layer:
    """The layer `build(key)` makes, holding `layer`'s parameters (`parameters` picks them out
    of either): how a layer moves to other spaces. `build` is only traced, so nothing is drawn
    or compiled for the parameters it would initialise."""
    shell = eqx.filter_eval_shape(build, jax.random.key(0))
    return eqx.tree_at(parameters, shell, parameters(layer), is_leaf=lambda x: x is None)
