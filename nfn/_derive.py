"""Derive the weight space of an Equinox model from its layers."""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from nfn._spec import WeightSpace

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

_HOW_TO = (
    "build the spec by hand and call nfn.WeightSpace.from_spec(eqx.filter(model, eqx.is_array), "
    "spec) instead (see the spec guide in the docs)"
)


def _walk(module: Any, builder: "_ChainBuilder", path: str) -> None:
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
        for k, layer in enumerate(module.layers):
            _walk(layer, builder, f"{path}.layers[{k}]")
    elif isinstance(module, eqx.nn.Sequential):
        for k, layer in enumerate(module.layers):
            _walk(layer, builder, f"{path}.layers[{k}]")
    elif isinstance(module, eqx.nn.Lambda):
        if not any(module.fn is fn for fn in _ELEMENTWISE):
            builder.barrier()
    elif isinstance(module, eqx.nn.Identity | eqx.nn.Dropout):
        pass
    else:
        raise ValueError(
            f"nfn.weight_space cannot derive the symmetry of {type(module).__name__} at {path}: "
            f"supported are eqx.nn.Linear, MLP, Sequential, Conv1d/2d/3d, Lambda, Identity and "
            f"Dropout; {_HOW_TO}"
        )


class _ChainBuilder:
    """Assigns axes along a feed-forward chain of linear-like layers.

    Neurons between two layers (joined only by elementwise functions) form one group with one
    permutation id. The chain's input and output neurons are fixed (`io="fixed"`, the true
    symmetry) or get their own ids (`io="permuted"`). An unknown `Lambda` is a barrier: the
    neurons on both of its sides are fixed, since it may mix them.
    """

    def __init__(self, io: str):
        self.io = io
        self.spec: dict[int, tuple] = {}
        self.next_id = 0
        self.input_id: int | None = self._boundary()
        self.pending: list[tuple[Any, Callable[[int | None], tuple]]] = []
        self.seen_layer = False

    def _fresh(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _boundary(self) -> int | None:
        return self._fresh() if self.io == "permuted" else None

    def _resolve(self, out_id: int | None) -> None:
        for array, axes in self.pending:
            self.spec[id(array)] = axes(out_id)
        self.pending = []

    def linear_like(self, weight, bias, *, extra_dims: int, bias_dims: int) -> None:
        if self.pending:
            hidden = self._fresh()
            self._resolve(hidden)
            self.input_id = hidden
        in_id = self.input_id
        self.pending.append((weight, lambda out: (out, in_id) + (None,) * extra_dims))
        if bias is not None:
            self.pending.append((bias, lambda out: (out,) + (None,) * bias_dims))

    def barrier(self) -> None:
        self._resolve(None)
        self.input_id = None

    def finish(self) -> None:
        self._resolve(self._boundary())


def weight_space(model: Any, *, io: Literal["fixed", "permuted"] = "fixed") -> WeightSpace:
    """The weight space of an Equinox model's array leaves (`eqx.filter(model, eqx.is_array)`).

    Supports `eqx.nn.Linear`, `eqx.nn.MLP`, `eqx.nn.Conv1d/2d/3d` (kernel spatial axes fixed),
    and `eqx.nn.Sequential` chains of those with `Lambda`-wrapped activations, `Identity` and
    `Dropout`, with or without biases. Neurons between two layers are permuted together.

    **Arguments:**

    - `model`: the Equinox model.
    - `io`: `"fixed"` (default) gives the true symmetry: the network's input and output neurons
      are not permuted. `"permuted"` also permutes them, each with its own id (the "NP" setting
      of neural functionals).

    **Raises:** `ValueError` for an unsupported module (the message says how to write a spec by
    hand instead) or an unknown `io`.

    A `Lambda` whose function is not a known elementwise activation (`jax.nn.relu`, `jnp.tanh`,
    ...) may mix neurons (e.g. a flatten), so the neurons on both of its sides are fixed.
    """
    if io not in ("fixed", "permuted"):
        raise ValueError(f"io must be 'fixed' or 'permuted', got {io!r}")
    builder = _ChainBuilder(io)
    _walk(model, builder, type(model).__name__)
    builder.finish()
    params = eqx.filter(model, eqx.is_array)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves_with_path:
        if id(leaf) not in builder.spec:
            raise ValueError(
                f"nfn.weight_space found no symmetry for array {jax.tree_util.keystr(path)} "
                f"of {type(model).__name__}; {_HOW_TO}"
            )
    spec = jax.tree_util.tree_map(lambda leaf: builder.spec[id(leaf)], params)
    return WeightSpace.from_spec(params, spec)
