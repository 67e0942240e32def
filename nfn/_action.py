"""The permutation group acting on a weight space: sampling, applying, composing, inverting."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from nfn._spec import WeightSpace

Permutation = dict[int, Int[Array, " n"]]
"""One index array per permutation id: `perm[id][i]` is the old index moved to position `i`."""


def sample_permutation(space: WeightSpace, *, key: PRNGKeyArray) -> Permutation:
    """An independent uniformly random permutation for every id of `space`."""
    return {
        pid: jax.random.permutation(jax.random.fold_in(key, index), size)
        for index, (pid, size) in enumerate(space.sizes.items())
    }


def identity_permutation(space: WeightSpace) -> Permutation:
    return {pid: jnp.arange(size) for pid, size in space.sizes.items()}


def compose_permutations(first: Permutation, second: Permutation) -> Permutation:
    """The permutation that acts like applying `first`, then `second`.

    `permute(space, permute(space, x, first), second)` equals
    `permute(space, x, compose_permutations(first, second))`.
    """
    _check_same_ids(first, second)
    return {pid: first[pid][second[pid]] for pid in first}


def invert_permutation(perm: Permutation) -> Permutation:
    return {pid: jnp.argsort(p) for pid, p in perm.items()}


def permute(space: WeightSpace, tree: PyTree[Array], perm: Permutation) -> PyTree[Array]:
    """Apply `perm` to parameters or features of `space`.

    Every axis with id `g` is re-indexed by `perm[g]`; fixed axes and a trailing channel axis (if
    present) are left alone. Works for parameters (leaf shapes as in `space`) and features (one
    extra trailing axis).
    """
    missing = [pid for pid in space.ids if pid not in perm]
    if missing:
        raise ValueError(f"permutation has no entry for ids {missing} of the weight space")
    for pid, size in space.sizes.items():
        if perm[pid].shape != (size,):
            raise ValueError(
                f"permutation for id {pid} has shape {perm[pid].shape}, expected ({size},)"
            )
    has_channels = _has_channels(space, tree)
    leaves = space.flatten(tree, channels=has_channels, name="tree to permute")
    out = []
    for leaf, x in zip(space.leaves, leaves):
        for axis, pid in enumerate(leaf.axes):
            if pid is not None:
                x = jnp.take(x, perm[pid], axis=axis)
        out.append(x)
    return space.unflatten(out)


def _has_channels(space: WeightSpace, tree: PyTree[Array]) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return False
    return jnp.ndim(leaves[0]) == len(space.leaves[0].shape) + 1


def _check_same_ids(first: Permutation, second: Permutation) -> None:
    if set(first) != set(second):
        raise ValueError(
            f"cannot compose permutations over different ids: {sorted(first)} and {sorted(second)}"
        )
