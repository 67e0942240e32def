"""Exploration in parameter space: the perturbed policies whose returns train the critic."""

from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import PRNGKeyArray

NOISES: tuple[str, ...] = ("gaussian", "uniform_scaled")

T = TypeVar("T")


def perturb(
    policy: T,
    *,
    key: PRNGKeyArray,
    noise: str = "gaussian",
    scale: float = 1.0,
    weight_clip: float | None = None,
) -> T:
    """`policy` with every floating-point array leaf perturbed independently per weight `w`.

    `noise="gaussian"` adds `N(0, scale^2)`; `noise="uniform_scaled"` adds
    `U(-scale |w|, scale |w|)`, so the noise follows each weight's magnitude (zero weights stay
    zero). With `weight_clip` the perturbed parameters `w + delta` are clipped to
    `[-weight_clip, weight_clip]`.
    """
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; known: {', '.join(NOISES)}")
    params, static = eqx.partition(policy, eqx.is_inexact_array)
    # One draw for the flat vector rather than one per leaf: every random call costs XLA
    # compilation time (about a second on a small CPU), and policies have many leaves.
    flat, unravel = ravel_pytree(params)
    if noise == "gaussian":
        delta = scale * jax.random.normal(key, flat.shape, flat.dtype)
    else:
        delta = scale * jnp.abs(flat) * jax.random.uniform(key, flat.shape, flat.dtype, -1.0, 1.0)
    perturbed = flat + delta
    if weight_clip is not None:
        perturbed = jnp.clip(perturbed, -weight_clip, weight_clip)
    return eqx.combine(unravel(perturbed), static)


def perturb_population(
    policy: T,
    num: int,
    *,
    key: PRNGKeyArray,
    multiple_policies: bool = False,
    noise: str = "gaussian",
    scale: float = 1.0,
    weight_clip: float | None = None,
) -> T:
    """`num` perturbed policies, stacked along a new leading axis of every array leaf.

    By default all are perturbations of the one `policy`. With `multiple_policies=True`, `policy`
    is already a stack of `num` policies (leading axis on every array leaf) and each is perturbed
    once.
    """
    keys = jax.random.split(key, num)
    params, static = eqx.partition(policy, eqx.is_array)

    def one(p, k):
        return eqx.filter(
            perturb(
                eqx.combine(p, static), key=k, noise=noise, scale=scale, weight_clip=weight_clip
            ),
            eqx.is_array,
        )

    if multiple_policies:
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(params)}
        if sizes != {num}:
            raise ValueError(f"multiple_policies needs {num} stacked policies, got leading {sizes}")
        stacked = jax.vmap(one)(params, keys)
    else:
        stacked = jax.vmap(one, in_axes=(None, 0))(params, keys)
    return eqx.combine(stacked, static)
