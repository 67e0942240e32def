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
    antithetic: bool = False,
) -> T:
    """`num` perturbed policies, stacked along a new leading axis of every array leaf.

    By default all are perturbations of the one `policy`. With `multiple_policies=True`, `policy`
    is already a stack of `num` policies (leading axis on every array leaf) and each is perturbed
    once. With `antithetic=True` (one policy, even `num`) the first `num // 2` are `policy +
    delta` and the rest, in the same order, `policy - delta` (each then clipped).
    """
    keys = jax.random.split(key, num // 2 if antithetic else num)
    params, static = eqx.partition(policy, eqx.is_array)

    def one(p, k):
        return eqx.filter(
            perturb(
                eqx.combine(p, static), key=k, noise=noise, scale=scale, weight_clip=weight_clip
            ),
            eqx.is_array,
        )

    if antithetic:
        if multiple_policies or num % 2:
            raise ValueError(
                f"antithetic pairs perturb one policy an even number of times, got num={num}"
                + (" with multiple_policies" if multiple_policies else "")
            )
        # Mirrored before clipping, so that each pair's noise is exactly opposite.
        plus = jax.vmap(
            lambda k: eqx.filter(
                perturb(eqx.combine(params, static), key=k, noise=noise, scale=scale),
                eqx.is_array,
            )
        )(keys)
        minus = jax.tree.map(lambda p, x: 2 * p - x, params, plus)
        stacked = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), plus, minus)
        if weight_clip is not None:
            stacked = jax.tree.map(lambda x: jnp.clip(x, -weight_clip, weight_clip), stacked)
    elif multiple_policies:
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(params)}
        if sizes != {num}:
            raise ValueError(f"multiple_policies needs {num} stacked policies, got leading {sizes}")
        stacked = jax.vmap(one)(params, keys)
    else:
        stacked = jax.vmap(one, in_axes=(None, 0))(params, keys)
    return eqx.combine(stacked, static)
