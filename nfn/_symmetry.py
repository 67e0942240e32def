"""Sign and scale symmetries of hidden neurons: sampling and applying them, and canonical forms.

A hidden neuron whose activation is odd (tanh) keeps the network's function when its incoming
weights and bias and its outgoing weights all change sign; one whose activation is positively
homogeneous (ReLU) keeps it when the incoming side is scaled by `a > 0` and the outgoing side by
`1 / a`. `nfn.NeuronSymmetry` records which applies to each permutation id of a weight space.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from nfn._spec import NeuronSymmetry, WeightSpace

SymmetryFactors = dict[int, Float[Array, " n"]]
"""One factor per neuron for ids with a sign or scale symmetry: `factors[id][i]` multiplies
neuron `i`'s incoming weights and bias and divides its outgoing weights. `±1` for `"odd"` ids,
`> 0` for `"homogeneous"` ones, any nonzero value for `"linear"` ones."""

_ALLOWED = {
    "odd": ("±1", lambda d: np.abs(d) == 1),
    "homogeneous": ("positive", lambda d: d > 0),
    "linear": ("nonzero", lambda d: d != 0),
}


def _records(space: WeightSpace, caller: str) -> list[NeuronSymmetry]:
    """The space's records of ids with a sign or scale symmetry, each after every id whose
    outgoing weights lie in its incoming leaves (so that those are canonical first)."""
    for pid in space.ids:
        if space.symmetry(pid) is None:
            raise ValueError(
                f"{caller}: permutation id {pid} has no recorded activation symmetry (a "
                "hand-written spec?); derive the space with nfn.weight_space, or record one "
                "with WeightSpace.with_symmetries(nfn.NeuronSymmetry(...))"
            )
    active = [record for record in space.symmetries if record.kind != "none"]
    feeds: dict[str, set[int]] = {}  # leaf path -> ids whose outgoing weights it holds
    for record in active:
        for path, _ in record.outgoing:
            feeds.setdefault(path, set()).add(record.id)
    after = {
        record.id: {h for path, _ in record.incoming for h in feeds.get(path, ())} - {record.id}
        for record in active
    }
    by_id = {record.id: record for record in active}
    order: list[NeuronSymmetry] = []
    done: set[int] = set()
    while len(order) < len(active):
        ready = [g for g in sorted(after) if g not in done and after[g] <= done]
        if not ready:
            cycle = sorted(g for g in after if g not in done)
            raise ValueError(
                f"{caller}: the incoming weights of permutation ids {cycle} depend on each "
                "other's outgoing weights in a cycle; record them as 'none'"
            )
        order.append(by_id[ready[0]])
        done.add(ready[0])
    return order


def _index(space: WeightSpace) -> dict[str, int]:
    return {leaf.path: k for k, leaf in enumerate(space.leaves)}


def _along(x: Array, factor: Array, axis: int) -> Array:
    """`factor` (one entry per index of `axis`) shaped to broadcast against `x`."""
    shape = [1] * x.ndim
    shape[axis] = factor.shape[0]
    return jnp.reshape(factor, shape).astype(x.dtype)


def _rescale(leaves: list, index: dict[str, int], record: NeuronSymmetry, factor: Array) -> None:
    """Multiply the neurons' incoming side by `factor`, divide the outgoing side, in place."""
    for path, axis in record.incoming:
        k = index[path]
        leaves[k] = leaves[k] * _along(leaves[k], factor, axis)
    for path, axis in record.outgoing:
        k = index[path]
        leaves[k] = leaves[k] / _along(leaves[k], factor, axis)


def sample_symmetry(
    space: WeightSpace, *, key: PRNGKeyArray, max_scale: float = 2.0
) -> SymmetryFactors:
    """Random sign flips and scalings, one factor per neuron of every id with such a symmetry.

    `"odd"` ids get independent uniform signs; `"homogeneous"` ids get scales drawn log-uniformly
    from `[1 / max_scale, max_scale]`; `"linear"` ids get both. Ids of kind `"none"` get no
    entry. Apply the result with [`nfn.apply_symmetry`][]; it leaves the network's function
    unchanged (data augmentation, tests).

    **Raises:** `ValueError` if an id of `space` has no recorded symmetry (a hand-written spec
    without [`nfn.NeuronSymmetry`][] records), or `max_scale < 1`.
    """
    if not (isinstance(max_scale, int | float) and max_scale >= 1):
        raise ValueError(f"sample_symmetry: max_scale must be a number >= 1, got {max_scale!r}")
    _records(space, "nfn.sample_symmetry")
    log_scale = math.log(max_scale)
    factors = {}
    for index, record in enumerate(space.symmetries):
        if record.kind == "none":
            continue
        size = space.sizes[record.id]
        sign_key, scale_key = jax.random.split(jax.random.fold_in(key, index))
        factor = jnp.ones(size)
        if record.kind in ("odd", "linear"):
            factor = jnp.where(jax.random.bernoulli(sign_key, 0.5, (size,)), -1.0, 1.0)
        if record.kind in ("homogeneous", "linear"):
            scale = jnp.exp(jax.random.uniform(scale_key, (size,), minval=-1.0) * log_scale)
            factor = factor * scale
        factors[record.id] = factor
    return factors


def apply_symmetry(
    space: WeightSpace, params: PyTree[ArrayLike], factors: SymmetryFactors
) -> PyTree[Array]:
    """Rescale the hidden neurons of **one** network: `factors[id][i]` multiplies neuron `i`'s
    incoming weights and bias and divides its outgoing weights (see
    [`nfn.NeuronSymmetry`][]). Ids without an entry are left alone. For a batch, `jax.vmap`.

    With factors allowed by each id's kind (as [`nfn.sample_symmetry`][] draws them) the
    network computes the same function.

    **Raises:** `ValueError` if an entry names an id that is not in `space`, has kind
    `"none"` or no record; has the wrong shape; or (when its values are known, i.e. outside
    `jit`) holds a value its kind does not allow (`±1` for odd, positive for homogeneous,
    nonzero for linear).
    """
    for pid, factor in factors.items():
        record = space.symmetry(pid) if pid in space.sizes else None
        if record is None or record.kind == "none":
            why = (
                "is not an id of the weight space"
                if pid not in space.sizes
                else "has no recorded activation symmetry"
                if record is None
                else "has activation symmetry 'none'"
            )
            raise ValueError(f"apply_symmetry: factors given for permutation id {pid}, which {why}")
        size = space.sizes[pid]
        if jnp.shape(factor) != (size,):
            raise ValueError(
                f"apply_symmetry: factors for permutation id {pid} have shape "
                f"{jnp.shape(factor)}, expected ({size},)"
            )
        if not isinstance(factor, jax.core.Tracer):
            allowed, check = _ALLOWED[record.kind]
            values = np.asarray(factor)
            bad = values[~check(values)]
            if bad.size:
                raise ValueError(
                    f"apply_symmetry: permutation id {pid} has kind {record.kind!r}, which "
                    f"allows {allowed} factors only, got {bad[0]!r}"
                )
    leaves = space.flatten(params, channels=False, name="params")
    index = _index(space)
    for pid, factor in factors.items():
        _rescale(leaves, index, space.symmetry(pid), jnp.asarray(factor))
    return space.unflatten(leaves)


def canonicalize(space: WeightSpace, params: PyTree[ArrayLike]) -> PyTree[Array]:
    """A canonical representative of **one** network under its hidden neurons' sign and scale
    symmetries; it computes the same function. For a batch, `jax.vmap`.

    Ids are visited from the input side on (each after the ids whose outgoing weights are among
    its incoming weights). For each neuron, its *incoming vector* is its incoming weights and
    bias (every leaf axis its record lists as incoming, all other axes flattened):

    - `"odd"` ids: the neuron's sign is flipped when the sum of its incoming vector is
      negative. When the sum is exactly zero, the sum of cubes decides; when that is zero too
      (e.g. all-zero incoming weights), the neuron is left as it is.
    - `"homogeneous"` ids: the incoming vector is divided by its Euclidean norm and the
      outgoing weights multiplied by it. A neuron with an all-zero incoming vector is left as
      it is (its outgoing weights then keep their scale: such a neuron outputs `f(0)`).
    - `"linear"` ids: both, the sign first.
    - `"none"` ids: left alone.

    Consequences: `canonicalize(space, apply_symmetry(space, p, d))` equals
    `canonicalize(space, p)` for every allowed `d` (exactly for sign flips, up to float rounding
    for scales), except at the ties above (measure zero for continuous weights);
    canonicalising twice changes nothing beyond float rounding (a relative `1e-6` in float32,
    `1e-12` in float64, from renormalising a unit norm; sign choices are exact); and
    canonicalisation commutes with permutations, since every statistic is a sum over the other
    axes. So a permutation-invariant model applied after `canonicalize` is invariant to
    permutations, sign flips and scalings together.

    It is differentiable almost everywhere: the sign choices are constants
    (`jax.lax.stop_gradient`); gradients flow through the norms.

    **Raises:** `ValueError` if an id of `space` has no recorded symmetry (hand-written specs
    need [`nfn.NeuronSymmetry`][] records), if the records' incoming weights depend on each
    other in a cycle, or if `params` does not fit `space`.
    """
    order = _records(space, "nfn.canonicalize")
    leaves = space.flatten(params, channels=False, name="params")
    index = _index(space)
    for record in order:
        size = space.sizes[record.id]
        rows = jnp.concatenate(
            [
                jnp.reshape(jnp.moveaxis(leaves[index[path]], axis, 0), (size, -1))
                for path, axis in record.incoming
            ],
            axis=1,
        )
        factor = jnp.ones(size, rows.dtype)
        if record.kind in ("odd", "linear"):
            first = jnp.sum(rows, axis=1)
            third = jnp.sum(rows**3, axis=1)
            statistic = jnp.where(first != 0, first, third)
            factor = jax.lax.stop_gradient(jnp.where(statistic < 0, -1.0, 1.0).astype(rows.dtype))
        if record.kind in ("homogeneous", "linear"):
            squares = jnp.sum(rows**2, axis=1)
            # The norm where it is positive, 1 where it is zero (the double `where` keeps the
            # gradient of the unused branch finite).
            norm = jnp.sqrt(jnp.where(squares > 0, squares, 1.0))
            factor = factor / norm
        _rescale(leaves, index, record, factor)
    return space.unflatten(leaves)
