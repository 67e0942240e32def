"""What the host envs' `jax.pure_callback`s share: batched policy arrays in, episode results
out."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree


def flatten_batch(params: PyTree, ndims: list[int]) -> tuple[PyTree, tuple[int, ...]]:
    """``params`` (leaves of one policy with any leading batch axes, as `vmap` hands them to a
    callback) as NumPy arrays with one leading axis, and the batch shape; ``ndims`` are the
    leaves' unbatched ranks."""
    leaves = jax.tree.leaves(params)
    batch_shape = leaves[0].shape[: leaves[0].ndim - ndims[0]]
    flat = jax.tree.map(
        lambda x, ndim: np.asarray(x).reshape(-1, *x.shape[x.ndim - ndim :]),
        params,
        jax.tree.unflatten(jax.tree.structure(params), ndims),
    )
    return flat, batch_shape


def episode_shapes(observation_size: int, observation_sums: bool) -> tuple:
    """The per-episode results of a host env's episode callback: length and return, then with
    ``observation_sums`` the sums of the observations and of their squares."""
    shapes = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32))
    if observation_sums:
        sums = jax.ShapeDtypeStruct((observation_size,), jnp.float32)
        shapes = (*shapes, sums, sums)
    return shapes


def host_results(results: tuple[np.ndarray, ...], batch_shape: tuple[int, ...]) -> tuple:
    """A host rollout's per-episode results (`episode_shapes`' order, one leading axis) as the
    callback returns them: shaped by ``batch_shape``, in the declared dtypes."""
    lengths, returns, *sums = results
    out = (
        np.asarray(lengths).astype(np.int32).reshape(batch_shape),
        np.asarray(returns).astype(np.float32).reshape(batch_shape),
    )
    return out + tuple(
        np.asarray(s).astype(np.float32).reshape(*batch_shape, s.shape[-1]) for s in sums
    )
