"""Weight spaces: a parameter pytree's shapes plus the permutation acting on each axis."""

import dataclasses
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Axes = tuple[int | None, ...]


@dataclasses.dataclass(frozen=True, init=False)
class Packed:
    """A spec entry for one array axis that packs several axes, row-major.

    `Packed((None, 4), (0, 16))` describes an axis of size 64 made of 4 blocks of 16: the block
    index is fixed and, inside every block, permutation id `0` acts on the 16 entries (the same
    permutation in every block). This is the layout of an LSTM's gate-packed axis
    (`4 * hidden`) or an attention projection's `heads * head_size` axis
    (`Packed((heads_id, heads), (dims_id, head_size))`). Layers and the group action see the
    factors as separate axes.

    **Arguments:** one `(id, size)` pair per factor, outermost first; `id` is an `int` or
    `None` (fixed).
    """

    factors: tuple[tuple[int | None, int], ...]

    def __init__(self, *factors: tuple[int | None, int]):
        if not factors:
            raise ValueError("Packed needs at least one (id, size) factor")
        clean = []
        for factor in factors:
            if not (isinstance(factor, tuple) and len(factor) == 2):
                raise ValueError(f"Packed factors are (id, size) pairs, got {factor!r}")
            pid, size = factor
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
                raise ValueError(f"Packed factor {factor!r}: size must be a positive int")
            if isinstance(pid, numbers.Integral) and not isinstance(pid, bool):
                pid = int(pid)
            clean.append((pid, int(size)))
        object.__setattr__(self, "factors", tuple(clean))

    @property
    def size(self) -> int:
        return math.prod(size for _, size in self.factors)

    def __repr__(self) -> str:
        return f"Packed{self.factors}"


SYMMETRY_KINDS = ("odd", "homogeneous", "linear", "none")


@dataclasses.dataclass(frozen=True)
class NeuronSymmetry:
    """The activation symmetry of one group of hidden neurons (one permutation id).

    Beyond permutations, a hidden neuron `i` of a layer `y = f(W x + b)` read by `z = V y` may
    be rescaled by a factor `d_i`: its incoming weights and bias (row `i` of `W`, `b[i]`)
    multiplied by `d_i` and its outgoing weights (column `i` of `V`) by `1 / d_i`. This leaves the
    network's function unchanged when `f(d x) = d f(x)` for every allowed `d`:

    - `"odd"`: `f` is odd (`tanh`, `sin`, `hard_tanh`): `d = ±1`, sign flips.
    - `"homogeneous"`: `f` is positively homogeneous (`relu`, `leaky_relu`, `abs`): `d > 0`.
    - `"linear"`: no activation (or only linear ones such as average pooling): any `d != 0`.
    - `"none"`: no such symmetry is known (`gelu`, `sigmoid`, a layer norm, a residual stream,
      recurrent or attention neurons, the network's input and output neurons); the neurons are
      only permuted.

    [`nfn.weight_space`][] records one per permutation id; for a hand-written spec pass them to
    [`nfn.WeightSpace.from_spec`][] or [`nfn.WeightSpace.with_symmetries`][].

    **Fields:**

    - `id`: the permutation id of the neurons.
    - `kind`: one of `"odd"`, `"homogeneous"`, `"linear"`, `"none"`.
    - `incoming`: `(leaf path, axis)` pairs of the axes holding the neurons' incoming weights and
      biases (multiplied by `d`). Axes are those of the leaf's unpacked view (`LeafSpace.axes`).
    - `outgoing`: `(leaf path, axis)` pairs of the axes holding their outgoing weights (multiplied
      by `1 / d`).

    For a kind other than `"none"`, every axis of the space with permutation id `id` must be
    listed in exactly one of `incoming` and `outgoing`, both must be non-empty, and no leaf may
    carry `id` on two axes.
    """

    id: int
    kind: str
    # Any sequence of pairs is accepted; they are stored as tuples (records are hashable).
    incoming: Sequence[tuple[str, int]] = ()
    outgoing: Sequence[tuple[str, int]] = ()

    def __post_init__(self):
        if self.kind not in SYMMETRY_KINDS:
            raise ValueError(
                f"NeuronSymmetry for permutation id {self.id}: kind {self.kind!r} is not one of "
                f"{', '.join(SYMMETRY_KINDS)}"
            )
        for name in ("incoming", "outgoing"):
            pairs = tuple((str(path), int(axis)) for path, axis in getattr(self, name))
            object.__setattr__(self, name, pairs)


@dataclasses.dataclass(frozen=True)
class LeafSpace:
    """One array leaf of a weight space.

    **Fields:**

    - `path`: the leaf's key path in the parameter pytree, as `jax.tree_util.keystr` prints it.
    - `shape`: the leaf's shape (without any channel axis).
    - `axes`: one entry per axis: an `int` permutation id (the axis is permuted by that
      permutation) or `None` (the axis is fixed).
    - `stored_shape`: the array's own shape when a spec entry [`nfn.Packed`][] split one of its
      axes; `shape` and `axes` then describe the unpacked view the layers and the group action
      work on. `None` when nothing is packed.
    """

    path: str
    shape: tuple[int, ...]
    axes: Axes
    stored_shape: tuple[int, ...] | None = None

    @property
    def array_shape(self) -> tuple[int, ...]:
        """The shape of the leaf's array (without any channel axis)."""
        return self.shape if self.stored_shape is None else self.stored_shape

    @property
    def permuted_positions(self) -> tuple[int, ...]:
        """Positions of the permuted axes, in order."""
        return tuple(k for k, a in enumerate(self.axes) if a is not None)

    @property
    def fixed_positions(self) -> tuple[int, ...]:
        """Positions of the fixed axes, in order."""
        return tuple(k for k, a in enumerate(self.axes) if a is None)

    @property
    def permuted_ids(self) -> tuple[int, ...]:
        """The permutation id of each permuted axis, in order."""
        return tuple(a for a in self.axes if a is not None)

    @property
    def permuted_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[k] for k in self.permuted_positions)

    @property
    def fixed_size(self) -> int:
        """Number of entries spanned by the fixed axes (1 if there are none)."""
        return math.prod(self.shape[k] for k in self.fixed_positions)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _is_axes(x: Any) -> bool:
    # A spec leaf is a tuple of scalars; containers of the pytree itself hold modules or arrays.
    return isinstance(x, tuple) and all(
        a is None or isinstance(a, numbers.Number | str | Packed) for a in x
    )


def _leaf_error(path: str, message: str) -> ValueError:
    return ValueError(f"weight space leaf {path}: {message}")


def _bad_id(path: str, axis: int, pid: Any) -> ValueError:
    return _leaf_error(
        path,
        f"axis {axis} has id {pid!r} of type {type(pid).__name__}; ids must be Python ints "
        "(or None for a fixed axis)",
    )


@dataclasses.dataclass(frozen=True)
class WeightSpace:
    """A parameter pytree's structure, shapes, and the permutation acting on each axis.

    Build one with [`nfn.WeightSpace.from_spec`][] from parameters and a hand-written spec, or
    derive it from an Equinox model with [`nfn.weight_space`][]. A `WeightSpace` is immutable
    and hashable, so layers keep it as static metadata.

    Axes that share an `int` id are permuted together by the same permutation (so they must have
    the same size), across leaves and within one leaf (a "tie", e.g. a recurrent matrix `(h, h)`).
    `None` marks a fixed axis: never permuted, mixed densely by the layers.
    """

    treedef: Any
    leaves: tuple[LeafSpace, ...]
    symmetries: tuple[NeuronSymmetry, ...] = ()

    def __post_init__(self):
        sizes: dict[int, tuple[int, str, int]] = {}
        for leaf in self.leaves:
            if len(leaf.axes) != len(leaf.shape):
                raise _leaf_error(
                    leaf.path,
                    f"spec {leaf.axes} has {len(leaf.axes)} axes but the array has rank "
                    f"{len(leaf.shape)} (shape {leaf.shape})",
                )
            for axis, pid in enumerate(leaf.axes):
                if pid is None:
                    continue
                if isinstance(pid, bool) or not isinstance(pid, int):
                    raise _bad_id(leaf.path, axis, pid)
                size = leaf.shape[axis]
                if pid in sizes and sizes[pid][0] != size:
                    first_size, first_path, first_axis = sizes[pid]
                    raise _leaf_error(
                        leaf.path,
                        f"axis {axis} has size {size} but permutation id {pid} also acts on "
                        f"axis {first_axis} of leaf {first_path} with size {first_size}; axes "
                        "sharing an id must have the same size",
                    )
                sizes.setdefault(pid, (size, leaf.path, axis))
        _check_symmetries(self.leaves, tuple(self.symmetries), {p: s[0] for p, s in sizes.items()})
        object.__setattr__(
            self, "symmetries", tuple(sorted(self.symmetries, key=lambda record: record.id))
        )

    @classmethod
    def from_spec(
        cls, params: Any, spec: Any, *, symmetries: tuple[NeuronSymmetry, ...] = ()
    ) -> "WeightSpace":
        """Describe `params` with `spec`.

        **Arguments:**

        - `params`: a pytree whose leaves are arrays (`None` subtrees are allowed, as left by
          `eqx.filter`).
        - `spec`: a pytree with the structure of `params` whose leaves are tuples: one entry per
          axis of the matching array, an `int` permutation id or `None`.
        - `symmetries`: optional [`nfn.NeuronSymmetry`][] records (the activation symmetry of
          hidden neurons), needed by [`nfn.canonicalize`][] and [`nfn.sample_symmetry`][].

        **Raises:** `ValueError` naming the leaf (and axis) for a structure mismatch, a non-array
        leaf, a rank mismatch, a non-int id, two axes with one id and different sizes, or a
        symmetry record that does not fit the spec.
        """
        params_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        try:
            spec_leaves = treedef.flatten_up_to(spec)
        except (ValueError, TypeError) as err:
            raise ValueError(_structure_mismatch(params, spec)) from err
        leaves = []
        for (path, array), axes in zip(params_leaves, spec_leaves):
            path_str = jax.tree_util.keystr(path)
            if not isinstance(array, jax.Array | np.ndarray):
                raise _leaf_error(
                    path_str,
                    f"is a {type(array).__name__}, not an array; filter the model first "
                    "(`eqx.filter(model, eqx.is_array)`)",
                )
            if not isinstance(axes, tuple):
                raise _leaf_error(
                    path_str,
                    f"spec entry {axes!r} is not a tuple of ints and Nones, one per axis",
                )
            array_shape = tuple(int(d) for d in array.shape)
            if len(axes) != len(array_shape):
                raise _leaf_error(
                    path_str,
                    f"spec {axes} has {len(axes)} axes but the array has rank "
                    f"{len(array_shape)} (shape {array_shape})",
                )
            shape, flat_axes = [], []
            for axis, (entry, size) in enumerate(zip(axes, array_shape)):
                if isinstance(entry, Packed):
                    if entry.size != size:
                        raise _leaf_error(
                            path_str,
                            f"axis {axis} has size {size} but {entry} packs {entry.size} entries",
                        )
                    shape += [n for _, n in entry.factors]
                    flat_axes += [pid for pid, _ in entry.factors]
                else:
                    shape.append(size)
                    flat_axes.append(entry)
            flat_axes = [
                int(a) if isinstance(a, numbers.Integral) and not isinstance(a, bool) else a
                for a in flat_axes
            ]
            # Checked here, before building the typed LeafSpace, so a bad id is a ValueError
            # naming the leaf and axis even under a runtime type checker.
            for axis, pid in enumerate(flat_axes):
                if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
                    raise _bad_id(path_str, axis, pid)
            packed = any(isinstance(entry, Packed) for entry in axes)
            leaves.append(
                LeafSpace(
                    path_str,
                    tuple(shape),
                    tuple(flat_axes),
                    array_shape if packed else None,
                )
            )
        return cls(treedef, tuple(leaves), tuple(symmetries))

    def with_symmetries(self, *symmetries: NeuronSymmetry) -> "WeightSpace":
        """This space with `symmetries` recorded, replacing any record of the same ids.

        **Raises:** `ValueError` naming the id and leaf when a record does not fit the space.
        """
        replaced = {record.id for record in symmetries}
        kept = tuple(record for record in self.symmetries if record.id not in replaced)
        return WeightSpace(self.treedef, self.leaves, kept + tuple(symmetries))

    def symmetry(self, pid: int) -> NeuronSymmetry | None:
        """The recorded activation symmetry of permutation id `pid` (None if none is recorded)."""
        for record in self.symmetries:
            if record.id == pid:
                return record
        return None

    @property
    def num_leaves(self) -> int:
        return len(self.leaves)

    @property
    def sizes(self) -> dict[int, int]:
        """Size of each permutation id, in order of first appearance."""
        sizes: dict[int, int] = {}
        for leaf in self.leaves:
            for size, pid in zip(leaf.shape, leaf.axes):
                if pid is not None:
                    sizes.setdefault(pid, size)
        return sizes

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self.sizes)

    @property
    def num_parameters(self) -> int:
        return sum(leaf.size for leaf in self.leaves)

    def __iter__(self) -> Iterator[LeafSpace]:
        return iter(self.leaves)

    def __len__(self) -> int:
        return len(self.leaves)

    def table(self) -> str:
        """A readable table: one row per leaf with its path, shape and axes."""
        rows = [("leaf", "shape", "axes")]
        rows += [
            (
                leaf.path,
                str(leaf.shape)
                if leaf.stored_shape is None
                else f"{leaf.stored_shape} as {leaf.shape}",
                str(leaf.axes),
            )
            for leaf in self.leaves
        ]
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        sizes = ", ".join(f"{pid}: {size}" for pid, size in self.sizes.items())
        lines.append(f"permutation sizes: {{{sizes}}}")
        if self.symmetries:
            kinds = ", ".join(f"{record.id}: {record.kind}" for record in self.symmetries)
            lines.append(f"activation symmetries: {{{kinds}}}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"WeightSpace({self.num_leaves} leaves, {self.num_parameters} parameters, "
            f"ids {self.sizes})\n{self.table()}"
        )

    def __reduce__(self):
        # A PyTreeDef of an Equinox module does not survive pickling equal to itself (its
        # metadata holds a sentinel object that unpickles as a new object). A skeleton (the
        # structure with leaf numbers as leaves) pickles as ordinary objects and flattens back
        # to the same structure, so the space compares equal after a round trip.
        skeleton = jax.tree_util.tree_unflatten(self.treedef, list(range(len(self.leaves))))
        return (_from_skeleton, (skeleton, self.leaves, self.symmetries))

    def check_transferable_to(self, other: "WeightSpace") -> None:
        """Check that layers built for this space can act on `other`: the same leaves in the same
        order with the same axes and the same fixed-axis sizes; only the sizes of permuted axes
        (hidden widths) may differ.

        **Raises:** `ValueError` naming the first leaf and axis that differ.
        """
        if len(self.leaves) != len(other.leaves):
            raise ValueError(
                f"cannot move to a weight space with {len(other.leaves)} leaves from one with "
                f"{len(self.leaves)}; only the sizes of permuted axes may change"
            )
        for old, new in zip(self.leaves, other.leaves):
            if old.axes != new.axes:
                raise _leaf_error(
                    new.path, f"axes {new.axes} differ from {old.axes} (leaf {old.path})"
                )
            for axis in new.fixed_positions:
                if old.shape[axis] != new.shape[axis]:
                    raise _leaf_error(
                        new.path,
                        f"fixed axis {axis} has size {new.shape[axis]} instead of "
                        f"{old.shape[axis]}; fixed axes are mixed densely, so their sizes "
                        "cannot change",
                    )

    def unflatten(self, leaves: list[Any]) -> Any:
        """Rebuild a pytree of this space's structure from leaves in leaf order (in the
        unpacked layout `flatten` returns; packed axes are packed back)."""
        leaves = [
            x
            if leaf.stored_shape is None
            else jnp.reshape(x, leaf.stored_shape + tuple(x.shape[len(leaf.shape) :]))
            for leaf, x in zip(self.leaves, leaves)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def flatten(self, tree: Any, *, channels: bool, name: str = "features") -> list[jax.Array]:
        """Leaves of `tree` in leaf order, checked against this space.

        With `channels=True` every leaf must have one extra trailing axis, and all leaves the
        same number of channels. Raises `ValueError` naming the leaf on any mismatch.
        """
        tree_leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            difference = _first_difference(self.treedef, treedef, "")
            raise ValueError(f"{name} do not have the structure of the weight space: {difference}")
        channel_count = None
        for leaf, x in zip(self.leaves, tree_leaves):
            if not hasattr(x, "shape"):
                raise _leaf_error(leaf.path, f"{name} leaf is a {type(x).__name__}, not an array")
            expected = leaf.array_shape
            expected_rank = len(expected) + (1 if channels else 0)
            if x.ndim != expected_rank or tuple(x.shape[: len(expected)]) != expected:
                trailing = " + (channels,)" if channels else ""
                raise _leaf_error(
                    leaf.path, f"{name} leaf has shape {x.shape}, expected {expected}{trailing}"
                )
            if channels:
                if channel_count is None:
                    channel_count = x.shape[-1]
                elif x.shape[-1] != channel_count:
                    raise _leaf_error(
                        leaf.path,
                        f"{name} leaf has {x.shape[-1]} channels but earlier leaves have "
                        f"{channel_count}",
                    )
        return [
            jnp.asarray(x)
            if leaf.stored_shape is None
            else jnp.reshape(jnp.asarray(x), leaf.shape + tuple(x.shape[len(leaf.array_shape) :]))
            for leaf, x in zip(self.leaves, tree_leaves)
        ]


def _structure_mismatch(params: Any, spec: Any) -> str:
    param_paths = {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    spec_paths = {
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_axes)[0]
    }
    missing = sorted(param_paths - spec_paths)
    extra = sorted(spec_paths - param_paths)
    details = []
    if missing:
        details.append(f"params leaves without a spec entry: {', '.join(missing)}")
    if extra:
        details.append(f"spec entries without a params leaf: {', '.join(extra)}")
    if not details:
        details.append("the containers differ (e.g. a list against a tuple, or module types)")
    return "spec does not have the structure of params; " + "; ".join(details)


def _from_skeleton(
    skeleton: Any, leaves: tuple[LeafSpace, ...], symmetries: tuple = ()
) -> WeightSpace:
    return WeightSpace(jax.tree_util.tree_structure(skeleton), leaves, symmetries)


def _check_symmetries(
    leaves: tuple[LeafSpace, ...], symmetries: tuple, sizes: dict[int, int]
) -> None:
    """Each record names an id of the space once, and (unless its kind is "none") lists every
    axis carrying that id exactly once, as incoming or outgoing, with no leaf holding it twice."""
    by_path = {leaf.path: leaf for leaf in leaves}
    seen: set[int] = set()
    for record in symmetries:
        if not isinstance(record, NeuronSymmetry):
            raise ValueError(f"symmetries must be nfn.NeuronSymmetry records, got {record!r}")
        pid = record.id
        where = f"symmetry of permutation id {pid}"
        if pid not in sizes:
            raise ValueError(f"{where}: the weight space has no such id (ids {sorted(sizes)})")
        if pid in seen:
            raise ValueError(f"{where}: recorded twice")
        seen.add(pid)
        listed: dict[tuple[str, int], str] = {}
        for role in ("incoming", "outgoing"):
            for path, axis in getattr(record, role):
                leaf = by_path.get(path)
                if leaf is None:
                    raise ValueError(f"{where}: {role} names leaf {path}, which the space lacks")
                if not 0 <= axis < len(leaf.axes) or leaf.axes[axis] != pid:
                    raise _leaf_error(
                        path,
                        f"{where} lists axis {axis} as {role}, but the leaf's axes are {leaf.axes}",
                    )
                if (path, axis) in listed:
                    raise _leaf_error(
                        path, f"{where} lists axis {axis} twice ({listed[(path, axis)]}, {role})"
                    )
                listed[(path, axis)] = role
        if record.kind == "none":
            continue
        if not record.incoming or not record.outgoing:
            raise ValueError(
                f"{where}: kind {record.kind!r} needs incoming and outgoing axes (neurons with "
                "only one side are input or output neurons: record them as 'none')"
            )
        for leaf in leaves:
            positions = [axis for axis, a in enumerate(leaf.axes) if a == pid]
            if len(positions) > 1:
                raise _leaf_error(
                    leaf.path,
                    f"{where}: axes {positions} all carry the id; a {record.kind!r} symmetry "
                    "needs each leaf to carry it at most once (record it as 'none')",
                )
            for axis in positions:
                if (leaf.path, axis) not in listed:
                    raise _leaf_error(
                        leaf.path,
                        f"axis {axis} carries permutation id {pid} but its {record.kind!r} "
                        "symmetry lists it as neither incoming nor outgoing",
                    )


def _child_names(node_type: type, data: Any, count: int) -> list[str]:
    """Key-path names of a pytree node's children, as `jax.tree_util.keystr` writes them."""
    if node_type is dict and isinstance(data, list | tuple) and len(data) == count:
        return [f"[{key!r}]" for key in data]
    if dataclasses.is_dataclass(node_type):
        dynamic = [f.name for f in dataclasses.fields(node_type) if not f.metadata.get("static")]
        if len(dynamic) == count:
            return [f".{name}" for name in dynamic]
    return [f"[{k}]" for k in range(count)]


def _static_difference(node_type: type, expected: Any, got: Any) -> str:
    if dataclasses.is_dataclass(node_type) and isinstance(expected, tuple):
        static = [f.name for f in dataclasses.fields(node_type) if f.metadata.get("static")]
        if static and len(expected) == len(got) >= len(static):
            # Equinox keeps the static field values last, in field order.
            pairs = zip(static, expected[-len(static) :], got[-len(static) :])
            diffs = [f"{field} expected {a!r}, got {b!r}" for field, a, b in pairs if a != b]
            if diffs:
                return ", ".join(diffs)
    return f"metadata expected {expected!r}, got {got!r}"


def _first_difference(expected: Any, got: Any, path: str) -> str:
    """Where two PyTreeDefs first differ, in one line (expected values first)."""
    where = f"at {path}" if path else "at the root"
    expected_data, got_data = expected.node_data(), got.node_data()
    if expected_data is None or got_data is None:
        if expected_data is None and got_data is None:
            return f"{where}: the structures differ"
        kind = "an array leaf" if expected_data is None else expected_data[0].__name__
        found = "an array leaf" if got_data is None else got_data[0].__name__
        return f"{where}: expected {kind}, got {found}"
    (expected_type, expected_aux), (got_type, got_aux) = expected_data, got_data
    if expected_type is not got_type:
        return f"{where}: expected a {expected_type.__name__}, got a {got_type.__name__}"
    expected_children, got_children = expected.children(), got.children()
    if expected_aux != got_aux or len(expected_children) != len(got_children):
        if expected_type is dict:
            missing = sorted(set(expected_aux) - set(got_aux), key=str)
            extra = sorted(set(got_aux) - set(expected_aux), key=str)
            return f"{where}: missing keys {missing}, unexpected keys {extra}"
        if len(expected_children) != len(got_children) and expected_aux == got_aux:
            return (
                f"{where}: {expected_type.__name__} with {len(got_children)} entries, expected "
                f"{len(expected_children)}"
            )
        detail = _static_difference(expected_type, expected_aux, got_aux)
        return f"{where}: {expected_type.__name__} differs: {detail}"
    names = _child_names(expected_type, expected_aux, len(expected_children))
    for name, a, b in zip(names, expected_children, got_children):
        if a != b:
            return _first_difference(a, b, path + name)
    return f"{where}: the structures differ"
