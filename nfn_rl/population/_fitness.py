"""What a batch's returns become before a critic fits them or ES weighs its perturbations, and
the ES estimate of the return's gradient."""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree

SHAPINGS: tuple[str, ...] = ("returns", "standardized", "centered_ranks")


def standardize(values: Float[Array, " n"], valid: Bool[Array, " n"]) -> Float[Array, " n"]:
    """`values` minus the mean of the valid ones, divided by their standard deviation; invalid
    entries are returned unchanged. Values that are equal up to float32 rounding (standard
    deviation below 1e-6 of their largest magnitude) standardise to 0, not to amplified rounding
    noise."""
    count = jnp.maximum(jnp.sum(valid), 1)
    mean = jnp.sum(jnp.where(valid, values, 0.0)) / count
    centred = jnp.where(valid, values - mean, 0.0)
    std = jnp.sqrt(jnp.sum(centred**2) / count)
    largest = jnp.max(jnp.where(valid, jnp.abs(values), 0.0))
    distinct = std > 1e-6 * largest
    return jnp.where(
        valid, jnp.where(distinct, centred / jnp.where(distinct, std, 1.0), 0.0), values
    )


def ranks(values: Float[Array, " n"], valid: Bool[Array, " n"]) -> Float[Array, " n"]:
    """The rank of each valid value among the valid ones (0 = smallest; ties in index order);
    invalid entries rank after every valid one."""
    order = jnp.argsort(jnp.where(valid, values, jnp.inf), stable=True)
    return jnp.zeros(values.shape, jnp.float32).at[order].set(jnp.arange(values.shape[0]))


def centered_ranks(values: Float[Array, " n"], valid: Bool[Array, " n"]) -> Float[Array, " n"]:
    """Each valid value's rank among the valid ones, mapped linearly onto [-0.5, 0.5]
    (OpenAI-ES's fitness shaping; a single valid value maps to 0); invalid entries are returned
    unchanged."""
    count = jnp.sum(valid)
    shaped = ranks(values, valid) / jnp.maximum(count - 1, 1) - 0.5
    return jnp.where(valid, jnp.where(count > 1, shaped, 0.0), values)


def shape_returns(
    kind: str, returns: Float[Array, " n"], valid: Bool[Array, " n"]
) -> Float[Array, " n"]:
    """`returns` as `kind` (one of `SHAPINGS`) makes them, over the `valid` entries."""
    if kind == "returns":
        return returns
    if kind == "standardized":
        return standardize(returns, valid)
    if kind == "centered_ranks":
        return centered_ranks(returns, valid)
    raise ValueError(f"unknown return shaping {kind!r}; known: {', '.join(SHAPINGS)}")


def es_gradient(
    deltas: Float[Array, "n d"], fitness: Float[Array, " n"], valid: Bool[Array, " n"]
) -> Float[Array, " d"]:
    """The evolution-strategies estimate of the return's gradient: the mean over the valid
    perturbations `deltas` (perturbed minus centre parameters) weighted by their shaped
    `fitness` (OpenAI-ES: centred ranks)."""
    weights = jnp.where(valid, fitness, 0.0)
    return weights @ deltas / jnp.maximum(jnp.sum(valid), 1)


def es_estimate(
    centre: PyTree[Array],
    candidates: PyTree[Array],
    fitness: Float[Array, " n"],
    valid: Bool[Array, " n"],
) -> PyTree[Array]:
    """`es_gradient` at the `centre` policy's arrays from the perturbed `candidates` (the same
    arrays with a leading axis of `n`), shaped like `centre`."""
    flat_centre, unravel = ravel_pytree(centre)
    deltas = jax.vmap(lambda p: ravel_pytree(p)[0])(candidates) - flat_centre
    return unravel(es_gradient(deltas, fitness, valid))
