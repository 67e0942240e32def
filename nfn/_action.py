"""The permutation group acting on a weight space: sampling, applying, composing, inverting."""

import jax
import jax.numpy as jnp
import numpy as np
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


def permute(
    space: WeightSpace,
    tree: PyTree[Array],
    perm: Permutation,
    *,
    channels: bool | None = None,
) -> PyTree[Array]:
    """Apply `perm` to the parameters or the features of **one** network of `space`.

    Every axis with id `g` is re-indexed by `perm[g]`; fixed axes and a trailing channel axis
    are left alone. For a batch of networks, `jax.vmap` over the batch axis.

    **Arguments:**

    - `space`: the weight space.
    - `tree`: parameters (leaf shapes as in `space`) or features (one extra trailing channel
      axis on every leaf, all with the same number of channels).
    - `perm`: one index array per id of `space`, each a permutation of `range(size)`.
    - `channels`: `False` for parameters, `True` for features. By default it is read off the
      shapes, which must then allow only that one reading: if the leaves could also be a batch
      of networks stacked along a leading axis (e.g. 16 networks of width 16 look like one
      network's features with 16 channels), say which with `channels=` (and `jax.vmap` a
      batch).

    **Raises:** `ValueError` if an id of `space` has no index array, an index array has the
    wrong shape or (when its values are known, i.e. outside `jit`) is not a permutation, or
    `tree` does not fit `space`.
    """
    _check_permutation(space, perm)
    if channels is None:
        channels = _infer_channels(space, tree)
    leaves = space.flatten(tree, channels=channels, name="tree to permute")
    out = []
    for leaf, x in zip(space.leaves, leaves):
        for axis, pid in enumerate(leaf.axes):
            if pid is not None:
                x = jnp.take(x, perm[pid], axis=axis)
        out.append(x)
    return space.unflatten(out)


def _check_permutation(space: WeightSpace, perm: Permutation) -> None:
    missing = [pid for pid in space.ids if pid not in perm]
    if missing:
        raise ValueError(f"permutation has no entry for ids {missing} of the weight space")
    for pid, size in space.sizes.items():
        p = perm[pid]
        if jnp.shape(p) != (size,):
            raise ValueError(
                f"permutation for id {pid} has shape {jnp.shape(p)}, expected ({size},)"
            )
        if not jnp.issubdtype(jnp.result_type(p), jnp.integer):
            raise ValueError(
                f"permutation for id {pid} has dtype {jnp.result_type(p)}, expected integers"
            )
        if isinstance(p, jax.core.Tracer):
            continue  # Values unknown under a trace; checked whenever they are concrete.
        values = np.asarray(p)
        if not np.array_equal(np.sort(values), np.arange(size)):
            counts = np.bincount(values[(values >= 0) & (values < size)], minlength=size)
            outside = sorted(set(values[(values < 0) | (values >= size)].tolist()))
            problem = (
                f"values {outside} are outside range({size})"
                if outside
                else f"index {int(np.argmax(counts))} appears {int(counts.max())} times and "
                f"index {int(np.argmin(counts))} is missing"
            )
            raise ValueError(
                f"permutation for id {pid} is not a permutation of range({size}): {problem}"
            )


def _infer_channels(space: WeightSpace, tree: PyTree[Array]) -> bool:
    """Whether `tree` holds features, from its shapes; raises when they allow another reading."""
    leaves = jax.tree_util.tree_leaves(tree)
    shapes = [tuple(jnp.shape(x)) for x in leaves]
    if len(shapes) != len(space.leaves):
        return False  # space.flatten reports the structure mismatch.
    pairs = list(zip(space.leaves, shapes))
    as_params = all(shape == leaf.array_shape for leaf, shape in pairs)
    as_features = (
        all(shape[:-1] == leaf.array_shape for leaf, shape in pairs)
        and len({shape[-1] for _, shape in pairs}) <= 1
    )
    as_batch = any(
        all(
            len(shape) == len(leaf.array_shape) + extra
            and shape[1:][: len(leaf.array_shape)] == leaf.array_shape
            for leaf, shape in pairs
        )
        and len({shape[0] for _, shape in pairs}) <= 1
        for extra in (1, 2)
    )
    if as_params:
        return False
    if as_features and not as_batch:
        return True
    if as_features:
        size = shapes[0][0] if shapes else 0
        raise ValueError(
            f"nfn.permute cannot tell whether these leaves are one network's features with "
            f"{shapes[0][-1]} channels or a batch of {size} networks stacked on a leading axis; "
            "pass channels=True for features, and permute a batch with jax.vmap, e.g. "
            "jax.vmap(lambda t: nfn.permute(space, t, perm, channels=False))(batch)"
        )
    if as_batch:
        raise ValueError(
            f"nfn.permute acts on one network, but every leaf has an extra leading axis of size "
            f"{shapes[0][0]} (a batch?); permute a batch with jax.vmap, e.g. "
            "jax.vmap(lambda t: nfn.permute(space, t, perm))(batch)"
        )
    return False  # Fits nothing: space.flatten names the first leaf that does not fit.


def _check_same_ids(first: Permutation, second: Permutation) -> None:
    if set(first) != set(second):
        raise ValueError(
            f"cannot compose permutations over different ids: {sorted(first)} and {sorted(second)}"
        )
