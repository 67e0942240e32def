"""How much signal a critic carries: its fit to returns it has not trained on, and how its
policy gradient compares with the critic-free ES estimate (`nfn_rl.population.es_gradient`)
from the same perturbations."""

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from nfn_rl.population import ranks


def r_squared(
    predictions: Float[Array, " n"], targets: Float[Array, " n"], valid: Bool[Array, " n"]
) -> Float[Array, ""]:
    """1 - (squared error of `predictions`) / (squared error of the targets' mean), over the
    valid entries: 1 for exact predictions, 0 for predicting the mean, negative for worse.
    NaN when the valid targets are all equal (nothing to explain) or there are none."""
    count = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid, targets, 0.0)) / jnp.maximum(count, 1)
    residual = jnp.sum(jnp.where(valid, (targets - predictions) ** 2, 0.0))
    total = jnp.sum(jnp.where(valid, (targets - mean) ** 2, 0.0))
    return jnp.where(total > 0, 1.0 - residual / jnp.where(total > 0, total, 1.0), jnp.nan)


def _correlation(x: Float[Array, " n"], y: Float[Array, " n"], valid: Bool[Array, " n"]):
    count = jnp.maximum(jnp.sum(valid), 1)
    x = jnp.where(valid, x - jnp.sum(jnp.where(valid, x, 0.0)) / count, 0.0)
    y = jnp.where(valid, y - jnp.sum(jnp.where(valid, y, 0.0)) / count, 0.0)
    norm = jnp.sqrt(jnp.sum(x**2) * jnp.sum(y**2))
    return jnp.where(norm > 0, jnp.sum(x * y) / jnp.where(norm > 0, norm, 1.0), jnp.nan)


def spearman(
    predictions: Float[Array, " n"], targets: Float[Array, " n"], valid: Bool[Array, " n"]
) -> Float[Array, ""]:
    """Spearman's rank correlation of `predictions` and `targets` over the valid entries (ties
    ranked in index order); NaN when either is constant."""
    return _correlation(ranks(predictions, valid), ranks(targets, valid), valid)


def cosine(a: Float[Array, " d"], b: Float[Array, " d"]) -> Float[Array, ""]:
    """The cosine of the angle between `a` and `b`; NaN when either is zero."""
    norm = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(norm > 0, jnp.dot(a, b) / jnp.where(norm > 0, norm, 1.0), jnp.nan)
