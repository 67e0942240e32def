"""Features over a weight space: the parameter pytree with a trailing channel axis per leaf."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def to_features(params: PyTree[Array]) -> PyTree[Array]:
    """Parameters as features with one channel: every leaf gets a trailing axis of size 1."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[..., None], params)


def from_features(features: PyTree[Array]) -> PyTree[Array]:
    """Inverse of [`nfn.to_features`][]: drop the trailing channel axis, which must have size 1."""

    def squeeze(path, x):
        if x.shape[-1:] != (1,):
            raise ValueError(
                f"features leaf {jax.tree_util.keystr(path)} has shape {x.shape}; "
                "from_features needs exactly one channel"
            )
        return x[..., 0]

    return jax.tree_util.tree_map_with_path(squeeze, features)


def stack(trees: list[PyTree[Array]]) -> PyTree[Array]:
    """Stack networks (or their features) of one structure along a new leading batch axis."""
    if not trees:
        raise ValueError("stack needs at least one pytree")
    structures = {jax.tree_util.tree_structure(t) for t in trees}
    if len(structures) != 1:
        raise ValueError("stack needs pytrees of one structure; got several")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(batch: PyTree[Array]) -> list[PyTree[Array]]:
    """Inverse of [`nfn.stack`][]: split the leading batch axis into a list of pytrees."""
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    if not leaves:
        return []
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"unstack needs one leading batch size; leaves have {sorted(sizes)}")
    (size,) = sizes
    return [jax.tree_util.tree_unflatten(treedef, [x[i] for x in leaves]) for i in range(size)]
