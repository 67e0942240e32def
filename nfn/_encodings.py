"""Input encodings: positions of the fixed (input/output) neurons, Fourier features of values."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._basis import check_positive_ints, default_float, normal_arrays, with_parameters
from nfn._spec import WeightSpace


def sinusoidal_table(length: int, size: int, max_period: float = 10_000.0) -> np.ndarray:
    """The transformer's sinusoidal position table, `(length, size)` (`size` even): row `t` is
    `sin(t w_0), cos(t w_0), sin(t w_1), ...` with `w_j = max_period ** (-2 j / size)`."""
    if size < 2 or size % 2:
        raise ValueError(f"a sinusoidal encoding needs an even size >= 2, got {size!r}")
    frequencies = max_period ** (-np.arange(size // 2) * 2.0 / size)
    angles = np.arange(length)[:, None] * frequencies[None, :]
    table = np.empty((length, size))
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


class PositionalEncoding(eqx.Module):
    """Encodings of the positions along every fixed axis, appended as channels.

    A fixed (`None`) axis is never permuted: its entries are the network's input features, its
    output units, a kernel's spatial offsets. This layer appends `size * slots` channels to
    every leaf, where `slots` is the largest number of fixed axes of any leaf: slot `k` of a
    leaf holds the encoding of the position along the leaf's `k`-th fixed axis (broadcast along
    its other axes), and slots beyond the leaf's fixed axes are zeros. Permuted axes get
    nothing, so the output is exactly as equivariant as the input: for every permutation of the
    space, encoding then permuting equals permuting then encoding.

    Layers built on the same space already tell fixed positions apart (they fold fixed axes
    into channels). The encoding is for the cheaper NP layers (NFN's recipe): build it on the
    space with fixed inputs and outputs (`nfn.weight_space(model)`), then feed its output to
    layers built on the space with them permuted (`io="permuted"`). The arrays are the same;
    the model is then equivariant to the hidden neurons' permutations only, as the true
    symmetry asks, at the cost of NP layers.

    `kind="sinusoidal"` uses [`sinusoidal_table`][nfn.sinusoidal_table] (nothing learned);
    `kind="learned"` learns one `(axis size, size)` table per leaf and fixed axis, drawn from
    `N(0, 1)`.
    """

    tables: tuple[Float[Array, "length size"], ...]
    space: WeightSpace = eqx.field(static=True)
    size: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    max_period: float = eqx.field(static=True)
    slots: int = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        size: int,
        *,
        kind: str = "sinusoidal",
        max_period: float = 10_000.0,
        dtype=None,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `space`: the weight space; its fixed axes are encoded.
        - `size`: channels per fixed axis (even for `"sinusoidal"`).
        - `kind`: `"sinusoidal"` or `"learned"`.
        - `max_period`: the longest period of the sinusoidal table.
        - `dtype`: dtype of the tables (default: JAX's default float).
        - `key`: PRNG key for the initialisation; required for `"learned"`.
        """
        check_positive_ints(size=size)
        if kind not in ("sinusoidal", "learned"):
            raise ValueError(f'kind must be "sinusoidal" or "learned", got {kind!r}')
        dtype = default_float(dtype)
        self.space, self.size, self.kind = space, size, kind
        self.max_period = float(max_period)
        self.slots = max((len(leaf.fixed_positions) for leaf in space), default=0)
        lengths = [leaf.shape[k] for leaf in space for k in leaf.fixed_positions]
        if kind == "sinusoidal":
            self.tables = tuple(
                jnp.asarray(sinusoidal_table(n, size, max_period), dtype) for n in lengths
            )
        else:
            if key is None:
                raise ValueError('kind="learned" needs a `key` for the initialisation')
            shapes = tuple((n, size) for n in lengths)
            self.tables = tuple(normal_arrays(key, shapes, (1.0,) * len(shapes), dtype))

    @property
    def extra_channels(self) -> int:
        """Channels the encoding appends: `size * slots`."""
        return self.size * self.slots

    def with_space(self, space: WeightSpace) -> "PositionalEncoding":
        """This encoding on a space of other hidden widths (fixed axes keep their sizes, see
        [`nfn.WeightSpace.check_transferable_to`][])."""
        self.space.check_transferable_to(space)
        return with_parameters(
            self,
            lambda key: PositionalEncoding(
                space,
                self.size,
                kind=self.kind,
                max_period=self.max_period,
                dtype=self.tables[0].dtype if self.tables else None,
                key=key,
            ),
            lambda m: m.tables,
        )

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        """Append `extra_channels` channels to every leaf of `features`."""
        leaves = self.space.flatten(features, channels=True)
        tables = iter(self.tables)
        outputs = []
        for leaf, x in zip(self.space, leaves):
            rank = len(leaf.shape)
            slots = []
            for k in leaf.fixed_positions:
                table = next(tables).astype(x.dtype)
                shape = [1] * rank + [self.size]
                shape[k] = leaf.shape[k]
                slots.append(jnp.broadcast_to(table.reshape(shape), (*leaf.shape, self.size)))
            missing = self.slots - len(slots)
            if missing:
                slots.append(jnp.zeros((*leaf.shape, missing * self.size), x.dtype))
            outputs.append(jnp.concatenate([x, *slots], axis=-1))
        return self.space.unflatten(outputs)


class FourierFeatures(eqx.Module):
    """Random Fourier features of every entry's channel vector: `[x, sin(2 pi x B), cos(2 pi x
    B)]` with `B` an `(in_channels, frequencies)` matrix drawn from `N(0, scale^2)` (Tancik et
    al. 2020), fixed unless `learned=True`.

    Acts entry by entry with the same function everywhere, so it commutes with every
    permutation of positions: equivariant for any weight space. It lets the following layers
    resolve small differences between weight values.
    """

    matrix: Float[Array, "in_channels frequencies"]
    in_channels: int = eqx.field(static=True)
    frequencies: int = eqx.field(static=True)
    keep_input: bool = eqx.field(static=True)
    learned: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        frequencies: int,
        *,
        scale: float = 1.0,
        keep_input: bool = True,
        learned: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: channels of the input features.
        - `frequencies`: number of random frequencies (columns of `B`); the output has
          `2 * frequencies` channels, plus `in_channels` with `keep_input`.
        - `scale`: standard deviation of `B`'s entries (in cycles per unit of the input).
        - `keep_input`: whether to keep the input channels first.
        - `learned`: whether `B` is trained (by default gradients do not reach it).
        - `dtype`: dtype of `B` (default: JAX's default float).
        - `key`: PRNG key for `B`.
        """
        check_positive_ints(in_channels=in_channels, frequencies=frequencies)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        dtype = default_float(dtype)
        self.in_channels, self.frequencies = in_channels, frequencies
        self.keep_input, self.learned = bool(keep_input), bool(learned)
        (self.matrix,) = normal_arrays(key, ((in_channels, frequencies),), (scale,), dtype)

    @property
    def out_channels(self) -> int:
        return 2 * self.frequencies + (self.in_channels if self.keep_input else 0)

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        matrix = self.matrix if self.learned else jax.lax.stop_gradient(self.matrix)

        def encode(path, x):
            if x.shape[-1:] != (self.in_channels,):
                raise ValueError(
                    f"features leaf {jax.tree_util.keystr(path)} has shape {x.shape}; "
                    f"FourierFeatures expects {self.in_channels} channels"
                )
            angles = 2 * math.pi * (x @ matrix.astype(x.dtype))
            parts = [x] if self.keep_input else []
            return jnp.concatenate([*parts, jnp.sin(angles), jnp.cos(angles)], axis=-1)

        return jax.tree_util.tree_map_with_path(encode, features)
