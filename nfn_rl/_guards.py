"""Guards that keep a non-finite gradient step from poisoning training state."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, PyTree


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """Whether every floating-point array in `tree` is finite."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select(ok: Bool[Array, ""], new: PyTree, old: PyTree) -> PyTree:
    """`new` where `ok`, else `old`, leaf by leaf (a skipped update keeps the old state)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
