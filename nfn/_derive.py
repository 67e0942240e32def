"""Derive the weight space of an Equinox model from its layers."""

from collections.abc import Callable, Mapping
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from nfn._blocks import Residual
from nfn._spec import NeuronSymmetry, Packed, WeightSpace

# Functions applied entry by entry: they commute with any permutation of neurons, so neurons on
# either side of them can be permuted together. Anything else in a `Lambda` is a barrier.
_ELEMENTWISE: frozenset[Callable] = frozenset(
    {
        jax.nn.relu,
        jax.nn.relu6,
        jax.nn.gelu,
        jax.nn.silu,
        jax.nn.swish,
        jax.nn.sigmoid,
        jax.nn.tanh,
        jax.nn.softplus,
        jax.nn.elu,
        jax.nn.celu,
        jax.nn.selu,
        jax.nn.leaky_relu,
        jax.nn.log_sigmoid,
        jax.nn.hard_tanh,
        jax.nn.mish,
        jnp.tanh,
        jnp.sin,
        jnp.abs,
        jnp.exp,
        jnp.square,
    }
)


# What each known activation allows beyond permutations (see `nfn.NeuronSymmetry`): "odd" when
# f(-x) = -f(x), "homogeneous" when f(a x) = a f(x) for a > 0. A hidden neuron's symmetry is
# what every function applied to it between its layers allows: the intersection of their sets.
_BOTH = frozenset({"odd", "homogeneous"})
_KINDS: tuple[tuple[Callable, frozenset[str]], ...] = (
    (jax.nn.tanh, frozenset({"odd"})),
    (jnp.tanh, frozenset({"odd"})),
    (jnp.sin, frozenset({"odd"})),
    (jax.nn.hard_tanh, frozenset({"odd"})),
    (jax.nn.relu, frozenset({"homogeneous"})),
    (jax.nn.leaky_relu, frozenset({"homogeneous"})),
    (jnp.abs, frozenset({"homogeneous"})),
)


def _activation_kind(fn: Callable) -> frozenset[str]:
    for known, kind in _KINDS:
        if fn is known:
            return kind
    return frozenset()


def _kind_name(kind: frozenset[str]) -> str:
    if kind == _BOTH:
        return "linear"
    return next(iter(kind)) if kind else "none"


def _commutes_with_permutations(fn: Callable, width: int) -> bool:
    """Whether `fn`, applied to a whole vector of `width` neurons, commutes with permuting them.

    Known elementwise functions do. Anything else is probed on a random vector with a
    transposition and a full cycle, which generate every permutation of `width` entries; a
    function that raises, changes the shape or fails the probe may mix neurons, so it is treated
    as a barrier. A probe can wrongly accept only a function that happens to commute at this one
    random point.
    """
    if any(fn is known for known in _ELEMENTWISE) or width <= 1:
        return True
    x = np.random.default_rng(0).standard_normal(width).astype(np.float32)
    generators = [np.roll(np.arange(width), 1), np.r_[1, 0, np.arange(2, width)]]
    try:
        y = np.asarray(fn(jnp.asarray(x)))
        if y.shape != x.shape:
            return False
        return all(
            np.allclose(np.asarray(fn(jnp.asarray(x[p]))), y[p], rtol=1e-5, atol=1e-6)
            for p in generators
        )
    except Exception:
        # Whatever made the probe fail (a shape it cannot take, a reduction over an axis the
        # vector lacks), the function cannot be vouched for: a barrier is always safe.
        return False


_HOW_TO = (
    "build the spec by hand and call nfn.WeightSpace.from_spec(eqx.filter(model, eqx.is_array), "
    "spec) instead (see the spec guide in the docs)"
)


def _walk(module: Any, builder: "_ChainBuilder", path: str) -> None:
    for cls, describe in builder.hooks.items():
        if isinstance(module, cls):
            _walk(describe(module), builder, path)
            return
    if isinstance(module, eqx.nn.Linear):
        builder.linear_like(module.weight, module.bias, extra_dims=0, bias_dims=0)
    elif isinstance(module, eqx.nn.Conv):
        if module.groups != 1:
            # Channels of a grouped conv may only be permuted within their group (or groups as
            # blocks): not one permutation per axis.
            raise ValueError(
                f"nfn.weight_space cannot derive the symmetry of a grouped convolution "
                f"(groups={module.groups}) at {path}; {_HOW_TO}"
            )
        spatial = module.weight.ndim - 2
        bias_dims = 0 if module.bias is None else module.bias.ndim - 1
        builder.linear_like(module.weight, module.bias, extra_dims=spatial, bias_dims=bias_dims)
    elif isinstance(module, eqx.nn.MLP):
        _walk_mlp(module, builder, path)
    elif isinstance(module, eqx.nn.Sequential):
        for k, layer in enumerate(module.layers):
            _walk(layer, builder, f"{path}.layers[{k}]")
    elif isinstance(module, eqx.nn.Lambda):
        if not any(module.fn is fn for fn in _ELEMENTWISE):
            builder.barrier()
        else:
            builder.activation(_activation_kind(module.fn))
    elif isinstance(module, eqx.nn.Identity | eqx.nn.Dropout | eqx.nn.Pool | eqx.nn.AdaptivePool):
        # Pooling acts on each channel's spatial positions separately. Identity, dropout and
        # average pooling are linear in each neuron; max pooling commutes with positive scales.
        average = (eqx.nn.AvgPool1d, eqx.nn.AvgPool2d, eqx.nn.AvgPool3d)
        average += (eqx.nn.AdaptiveAvgPool1d, eqx.nn.AdaptiveAvgPool2d, eqx.nn.AdaptiveAvgPool3d)
        maximum = (eqx.nn.MaxPool1d, eqx.nn.MaxPool2d, eqx.nn.MaxPool3d)
        maximum += (eqx.nn.AdaptiveMaxPool1d, eqx.nn.AdaptiveMaxPool2d, eqx.nn.AdaptiveMaxPool3d)
        if isinstance(module, maximum):
            builder.activation(frozenset({"homogeneous"}))
        elif isinstance(module, eqx.nn.Pool | eqx.nn.AdaptivePool) and not isinstance(
            module, average
        ):
            builder.activation(frozenset())
    elif isinstance(module, eqx.nn.LayerNorm):
        # Mean and variance over all entries do not change when the leading (neuron or
        # channel) axis is permuted; the elementwise affine parameters follow that axis.
        for array in (module.weight, module.bias):
            if array is not None:
                if array.ndim == 0:
                    builder.fixed(array)
                else:
                    builder.neuron_parameter(array, leading=0)
    elif isinstance(module, eqx.nn.LSTMCell):
        builder.recurrent_cell(module, gates=4)
    elif isinstance(module, eqx.nn.GRUCell):
        builder.recurrent_cell(module, gates=3)
    elif isinstance(module, eqx.nn.MultiheadAttention):
        builder.attention(module)
    elif isinstance(module, eqx.nn.Embedding):
        builder.embedding(module.weight)
    elif isinstance(module, Residual):
        builder.residual(lambda: _walk(module.body, builder, f"{path}.body"))
    else:
        raise ValueError(
            f"nfn.weight_space cannot derive the symmetry of {type(module).__name__} at {path}: "
            f"supported are eqx.nn.Linear, MLP, Sequential, Conv1d/2d/3d, Embedding, LayerNorm, "
            f"LSTMCell, GRUCell, MultiheadAttention, pooling layers, Lambda, Identity, Dropout "
            f"and nfn.Residual (describe other modules with `hooks=`), or {_HOW_TO}"
        )


def _walk_mlp(module: eqx.nn.MLP, builder: "_ChainBuilder", path: str) -> None:
    if module.scan and module.depth >= 2:
        # The hidden layers are one Linear stacked along a leading layer axis, whose rows
        # would each need their own permutation id.
        raise ValueError(
            f"nfn.weight_space cannot derive the symmetry of an eqx.nn.MLP built with scan=True "
            f"at {path}; build it with scan=False, or {_HOW_TO}"
        )
    # Equinox keeps a learned activation's parameters once per hidden neuron, stacked over the
    # hidden layers: shape (depth, width, ...). Row k belongs to layer k's neurons, so with more
    # than one hidden layer the axis needs a different id per row: not expressible, so those
    # neurons are fixed.
    learned = jax.tree_util.tree_leaves(eqx.filter(module.activation, eqx.is_array))
    learned_final = jax.tree_util.tree_leaves(eqx.filter(module.final_activation, eqx.is_array))
    mixing = not learned and not _commutes_with_permutations(module.activation, module.width_size)
    last = len(module.layers) - 1
    for k, layer in enumerate(module.layers):
        _walk(layer, builder, f"{path}.layers[{k}]")
        if k == last:
            break
        if len(module.layers) == 2 and learned:
            for array in learned:
                builder.neuron_parameter(array, leading=1)
        elif learned or mixing:
            builder.barrier()
        else:
            builder.activation(_activation_kind(module.activation))
    if len(module.layers) != 2:
        # Stacked over several hidden layers (fixed above), or over none (depth 0: unused).
        for array in learned:
            builder.fixed(array)
    if module.out_size == "scalar":
        for array in learned_final:
            builder.fixed(array)
        return
    for array in learned_final:
        builder.neuron_parameter(array, leading=0)
    if not learned_final and not _commutes_with_permutations(
        module.final_activation, module.out_size
    ):
        builder.barrier()


class _ChainBuilder:
    """Assigns axes along a feed-forward chain of linear-like layers.

    Neurons between two layers (joined only by elementwise functions) form one group with one
    permutation id. The chain's input and output neurons are fixed (`io="fixed"`, the true
    symmetry) or get their own ids (`io="permuted"`). An unknown `Lambda` is a barrier: the
    neurons on both of its sides are fixed, since it may mix them.

    Ids are provisional while walking: a residual connection adds two groups of neurons entry by
    entry, so their ids are merged afterwards (union-find), and merging with a fixed group fixes
    the whole class. `spec_of` gives the final axes, ids renumbered in order of creation.
    """

    def __init__(self, io: str, hooks: Mapping[type, Callable[[Any], Any]]):
        self.io = io
        self.hooks = dict(hooks)
        self.spec: dict[int, tuple] = {}
        self.next_id = 0
        self.parent: dict[int, int] = {}
        self.fixed_roots: set[int] = set()
        self.input_id: int | None = self._boundary()
        self.pending: list[tuple[Any, Callable[[int | None], tuple]]] = []
        self.numbers: dict[int, int] = {}
        # Activation symmetries: the kinds of the functions applied to the current neurons since
        # they were produced, each id's kind, each array's axis roles ("incoming": the axis
        # indexes the neurons a layer produces, "outgoing": the neurons it reads), and the ids
        # whose neurons do something other than feed forward (residual streams).
        self.current: frozenset[str] = _BOTH
        self.kinds: dict[int, frozenset[str]] = {}
        self.roles: dict[int, tuple[str | None, ...]] = {}
        self.tainted: set[int] = set()

    def _fresh(self) -> int:
        self.next_id += 1
        self.parent[self.next_id - 1] = self.next_id - 1
        return self.next_id - 1

    def _boundary(self) -> int | None:
        return self._fresh() if self.io == "permuted" else None

    def _find(self, pid: int) -> int:
        while self.parent[pid] != pid:
            self.parent[pid] = self.parent[self.parent[pid]]
            pid = self.parent[pid]
        return pid

    def merge(self, a: int | None, b: int | None) -> None:
        """The neurons with ids `a` and `b` are permuted together (None: they are fixed)."""
        if a is None and b is None:
            return
        if a is None or b is None:
            self.fixed_roots.add(self._find(a if b is None else b))
            return
        self.tainted.update((a, b))
        ra, rb = sorted((self._find(a), self._find(b)))
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.fixed_roots:
                self.fixed_roots.add(ra)

    def _resolve(self, out_id: int | None) -> None:
        for array, axes in self.pending:
            self.spec[id(array)] = axes(out_id)
        self.pending = []

    def close(self) -> int | None:
        """Give the pending layer's outputs an id: the id of the neurons the chain is now at."""
        if self.pending:
            self.input_id = self._fresh()
            self._resolve(self.input_id)
        if self.input_id is not None:
            self.kinds[self.input_id] = self.kinds.get(self.input_id, _BOTH) & self.current
        self.current = _BOTH
        return self.input_id

    def activation(self, kind: frozenset[str]) -> None:
        """An elementwise function of the current neurons, allowing `kind` (see `_KINDS`)."""
        self.current = self.current & kind

    def linear_like(self, weight, bias, *, extra_dims: int, bias_dims: int) -> None:
        in_id = self.close()
        self.pending.append((weight, lambda out: (out, in_id) + (None,) * extra_dims))
        self.roles[id(weight)] = ("incoming", "outgoing") + (None,) * extra_dims
        if bias is not None:
            self.pending.append((bias, lambda out: (out,) + (None,) * bias_dims))
            self.roles[id(bias)] = ("incoming",) + (None,) * bias_dims

    def embedding(self, weight) -> None:
        # A linear map of a one-hot input stored transposed: (vocabulary, out).
        in_id = self.close()
        self.pending.append((weight, lambda out: (in_id, out)))
        self.roles[id(weight)] = ("outgoing", "incoming")

    def recurrent_cell(self, cell, gates: int) -> None:
        """An LSTM or GRU cell: every gate block of the packed `gates * hidden` axis is
        permuted by the hidden neurons' id; the cell's state is those neurons."""
        in_id = self.close()
        hidden = self._fresh()
        packed = Packed((None, gates), (hidden, cell.hidden_size))
        self.spec[id(cell.weight_ih)] = (packed, in_id)
        self.spec[id(cell.weight_hh)] = (packed, hidden)
        if cell.bias is not None:
            self.spec[id(cell.bias)] = (packed,)
        bias_n = getattr(cell, "bias_n", None)
        if bias_n is not None:
            self.spec[id(bias_n)] = (hidden,)
        self.input_id = hidden

    def attention(self, mha) -> None:
        """Self-attention on the current neurons: heads are permuted together across the
        projections, and inside the heads, one id for the query/key dimensions (a dot
        product) and one for the value dimensions. Each head may in truth permute its own
        dimensions independently; ids express the subgroup that does the same in every head."""
        in_id = self.close()
        heads, qk, vo = self._fresh(), self._fresh(), self._fresh()
        qk_axis = Packed((heads, mha.num_heads), (qk, mha.qk_size))
        vo_axis = Packed((heads, mha.num_heads), (vo, mha.vo_size))
        # Keys and values read the same neurons only when they have the same size; otherwise
        # (cross-attention inputs of another width) their inputs are fixed.
        for proj, axis, size in (
            (mha.query_proj, qk_axis, mha.query_size),
            (mha.key_proj, qk_axis, mha.key_size),
            (mha.value_proj, vo_axis, mha.value_size),
        ):
            self.spec[id(proj.weight)] = (axis, in_id if size == mha.query_size else None)
            if proj.bias is not None:
                self.spec[id(proj.bias)] = (axis,)
        self.pending.append((mha.output_proj.weight, lambda out: (out, vo_axis)))
        if mha.output_proj.bias is not None:
            self.pending.append((mha.output_proj.bias, lambda out: (out,)))

    def neuron_parameter(self, array, *, leading: int) -> None:
        """A per-neuron parameter of the current neurons (after `leading` axes)."""
        trailing = array.ndim - leading - 1

        def axes(out: int | None) -> tuple:
            return (None,) * leading + (out,) + (None,) * trailing

        # A layer norm or a learned activation acts on each neuron in its own way: no sign or
        # scale symmetry is left.
        self.current = frozenset()

        if self.pending:
            self.pending.append((array, axes))
        else:
            self.spec[id(array)] = axes(self.input_id)

    def fixed(self, array) -> None:
        self.spec[id(array)] = (None,) * array.ndim

    def barrier(self) -> None:
        self._resolve(None)
        self.input_id = None
        self.current = _BOTH

    def residual(self, walk_body: Callable[[], None]) -> None:
        """`x + body(x)`: the body's output neurons are the stream's neurons."""
        stream = self.close()
        walk_body()
        self.merge(self.close(), stream)
        self.input_id = stream

    def finish(self) -> None:
        self._resolve(self._boundary())
        # Final ids: the classes still permuted, numbered in order of creation.
        used = {
            self._find(pid)
            for axes in self.spec.values()
            for entry in axes
            for pid in ([p for p, _ in entry.factors] if isinstance(entry, Packed) else [entry])
            if pid is not None
        }
        self.numbers = {root: k for k, root in enumerate(sorted(used - self.fixed_roots))}

    def spec_of(self, array) -> tuple:
        return tuple(
            Packed(*((self._final(pid), size) for pid, size in entry.factors))
            if isinstance(entry, Packed)
            else self._final(entry)
            for entry in self.spec[id(array)]
        )

    def symmetries(self, arrays: list[tuple[str, Any]]) -> tuple[NeuronSymmetry, ...]:
        """One record per final id, from the roles of its axes in `arrays` (path, array)."""
        kinds: dict[int, frozenset[str]] = {}
        for pid in self.parent:
            root = self._find(pid)
            final = None if root in self.fixed_roots else self.numbers.get(root)
            if final is not None:
                kind = self.kinds.get(pid, _BOTH) if pid not in self.tainted else frozenset()
                kinds[final] = kinds.get(final, _BOTH) & kind
        sides: dict[int, dict[str, list]] = {g: {"incoming": [], "outgoing": []} for g in kinds}
        for path, array in arrays:
            spec = self.spec_of(array)
            if any(isinstance(entry, Packed) for entry in spec):
                # Recurrent cells and attention: their neurons get no sign or scale symmetry.
                for entry in spec:
                    factors = entry.factors if isinstance(entry, Packed) else [(entry, 0)]
                    for pid, _ in factors:
                        if pid is not None:
                            kinds[pid] = frozenset()
                continue
            roles = self.roles.get(id(array))
            for axis, pid in enumerate(spec):
                if pid is None:
                    continue
                role = None if roles is None else roles[axis]
                if role is None:
                    kinds[pid] = frozenset()  # e.g. a layer norm's per-neuron parameters
                else:
                    sides[pid][role].append((path, axis))
        records = []
        for pid in sorted(kinds):
            incoming, outgoing = sides[pid]["incoming"], sides[pid]["outgoing"]
            ids_per_leaf = [path for path, _ in incoming + outgoing]
            if not incoming or not outgoing or len(set(ids_per_leaf)) < len(ids_per_leaf):
                kinds[pid] = frozenset()
            kind = _kind_name(kinds[pid])
            if kind == "none":
                records.append(NeuronSymmetry(pid, "none"))
            else:
                records.append(NeuronSymmetry(pid, kind, tuple(incoming), tuple(outgoing)))
        return tuple(records)

    def _final(self, pid: int | None) -> int | None:
        if pid is None:
            return None
        root = self._find(pid)
        return None if root in self.fixed_roots else self.numbers[root]


def _check_no_shared_arrays(leaves_with_path: list) -> None:
    # The derivation keys axes by array identity, and a permutation acts on each leaf on its own:
    # one array at two leaves (a tied layer) would take one leaf's axes for both, and permuting
    # would untie the copies.
    first_path: dict[int, str] = {}
    for path, leaf in leaves_with_path:
        name = jax.tree_util.keystr(path)
        if id(leaf) in first_path:
            raise ValueError(
                f"nfn.weight_space: leaf {name} is the same array as leaf {first_path[id(leaf)]} "
                f"(a shared, tied parameter); weight spaces need one array per leaf. Untie the "
                f"layers, or {_HOW_TO}"
            )
        first_path[id(leaf)] = name


def weight_space(
    model: Any,
    *,
    io: Literal["fixed", "permuted"] = "fixed",
    hooks: Mapping[type, Callable[[Any], Any]] | None = None,
) -> WeightSpace:
    """The weight space of an Equinox model's array leaves (`eqx.filter(model, eqx.is_array)`).

    Supports `eqx.nn.Linear`, `eqx.nn.MLP`, `eqx.nn.Conv1d/2d/3d` (kernel spatial axes fixed),
    `eqx.nn.Embedding`, `eqx.nn.LayerNorm` (its weight and bias follow the neurons or channels
    of their leading axis), `eqx.nn.LSTMCell` and `eqx.nn.GRUCell` (the gate-packed axis
    `gates * hidden` is a [`nfn.Packed`][] axis: each gate block permuted by the hidden id; the
    cell's state is its hidden neurons, permuted even with `io="fixed"`),
    `eqx.nn.MultiheadAttention` as self-attention on the current neurons (heads permuted
    together, and one id each for the query/key and value dimensions inside the heads: the
    subgroup that permutes every head's dimensions the same way), pooling layers
    (`MaxPool2d`, `AvgPool1d`, `AdaptiveAvgPool2d`, ...: per channel, so they pass the channels
    through), [`nfn.Residual`][] blocks, and
    `eqx.nn.Sequential` chains of those with `Lambda`-wrapped activations, `Identity` and
    `Dropout`, with or without biases. Neurons between two layers are permuted together.

    **Arguments:**

    - `model`: the Equinox model.
    - `io`: `"fixed"` (default) gives the true symmetry: the network's input and output neurons
      are not permuted. `"permuted"` also permutes them, each with its own id (the "NP" setting
      of neural functionals).
    - `hooks`: how to read modules of other types: `{MyBlock: describe}`, where
      `describe(block)` returns the same computation written with supported modules that hold
      the block's own arrays (not copies), e.g.
      `lambda b: nfn.Residual(eqx.nn.Sequential([b.up, eqx.nn.Lambda(jax.nn.relu), b.down]))`
      for a block computing `x + down(relu(up(x)))`. Hooks are checked before the built-in
      rules, so they may also override them.

    **Raises:** `ValueError` for an unsupported module (the message says how to write a spec by
    hand instead), an array shared by two leaves (tied layers), or an unknown `io`.

    A `Lambda` whose function is not a known elementwise activation (`jax.nn.relu`, `jnp.tanh`,
    ...) may mix neurons (e.g. a flatten), so the neurons on both of its sides are fixed. An
    `MLP`'s activations see a vector of known width, so any activation that commutes with
    permuting that vector (checked on a random vector) keeps the symmetry; others are barriers
    too. A learned activation's per-neuron parameters follow their neurons when the MLP has one
    hidden layer; with more, its hidden neurons are fixed (its parameters are stacked over
    layers, one axis that would need a permutation per row). `scan=True` MLPs are not supported.
    In a residual block the stream and the block's output share one id; if the block ends in a
    barrier, the stream is fixed wherever it appears.
    """
    if io not in ("fixed", "permuted"):
        raise ValueError(f"io must be 'fixed' or 'permuted', got {io!r}")
    params = eqx.filter(model, eqx.is_array)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    _check_no_shared_arrays(leaves_with_path)
    builder = _ChainBuilder(io, hooks or {})
    _walk(model, builder, type(model).__name__)
    builder.finish()
    for path, leaf in leaves_with_path:
        if id(leaf) not in builder.spec:
            raise ValueError(
                f"nfn.weight_space found no symmetry for array {jax.tree_util.keystr(path)} "
                f"of {type(model).__name__}; {_HOW_TO}"
            )
    spec = jax.tree_util.tree_map(builder.spec_of, params)
    arrays = [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves_with_path]
    return WeightSpace.from_spec(params, spec, symmetries=builder.symmetries(arrays))
