"""Observation normalisation for population methods, as ARS and Faccio et al.'s PSSVF use it:
policies act on ``(obs - mean) / std`` with the running moments of every observation seen."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from nfn_rl.envs import EpisodeSummary

# Observation entries whose standard deviation is below this are divided by it instead, so that
# a (nearly) constant entry does not amplify rounding into large inputs.
MIN_STD = 1e-2


class ObservationNormalizer(eqx.Module):
    """The running count, mean and sum of squared deviations of the observations that the
    population's policies acted on (every counted step of every episode so far).

    The policies a population trainer rolls out, evaluates and returns are its parameters
    folded with these moments (`fold`): they act on ``(obs - mean) / std`` of the raw
    observation, so the native and MJX simulators, evaluation and a saved policy use the same
    normalisation. The moments are frozen within an iteration: `update` is applied after the
    iteration's rollouts, for the next one. Before any observation, the normalisation is the
    identity.
    """

    count: Float[Array, ""]
    mean: Float[Array, " obs"]
    square_deviation_sum: Float[Array, " obs"]

    @classmethod
    def empty(cls, observation_size: int) -> "ObservationNormalizer":
        zeros = jnp.zeros(observation_size, jnp.float32)
        return cls(jnp.zeros((), jnp.float32), zeros, zeros)

    @property
    def std(self) -> Float[Array, " obs"]:
        """The standard deviation of each observation entry, at least `MIN_STD` (1 before any
        observation)."""
        variance = self.square_deviation_sum / jnp.maximum(self.count, 1.0)
        return jnp.where(self.count > 0, jnp.maximum(jnp.sqrt(variance), MIN_STD), 1.0)

    def update(
        self, summaries: EpisodeSummary, counted: Bool[Array, " n"] | None = None
    ) -> "ObservationNormalizer":
        """The moments with the observations of a batch of episodes (`summaries` with a
        leading episode axis) merged in; episodes where ``counted`` is False (e.g. those with
        non-finite observations) are left out."""
        lengths = summaries.length.astype(jnp.float32)
        keep = jnp.isfinite(summaries.observation_square_sum).all(axis=-1)
        if counted is not None:
            keep = keep & counted
        batch_count = jnp.sum(jnp.where(keep, lengths, 0.0))

        def total(x):
            return jnp.sum(jnp.where(keep[:, None], x, 0.0), axis=0)

        batch_sum, batch_square_sum = (
            total(summaries.observation_sum),
            total(summaries.observation_square_sum),
        )
        safe_count = jnp.maximum(batch_count, 1.0)
        batch_mean = batch_sum / safe_count
        batch_deviations = jnp.maximum(batch_square_sum - batch_count * batch_mean**2, 0.0)
        # Chan et al.'s parallel merge of (count, mean, sum of squared deviations).
        count = self.count + batch_count
        delta = batch_mean - self.mean
        weight = batch_count / jnp.maximum(count, 1.0)
        return ObservationNormalizer(
            count=count,
            mean=self.mean + delta * weight,
            square_deviation_sum=self.square_deviation_sum
            + batch_deviations
            + delta**2 * self.count * weight,
        )

    def fold(self, policy: PyTree[Array]) -> PyTree[Array]:
        """The arrays of the `eqx.nn.MLP` ``policy`` (any leading batch axes) that act on raw
        observations as ``policy`` acts on normalised ones: the first layer's weight divided by
        `std` column-wise, its bias shifted by the weight times ``-mean / std``."""
        first = policy.layers[0]
        if first.bias is None:
            raise ValueError(
                "observation_normalization needs a first policy layer with a bias (to fold the "
                "observation mean into)"
            )
        weight = first.weight / self.std
        bias = first.bias - jnp.einsum("...ij,j->...i", weight, self.mean)
        return eqx.tree_at(lambda p: (p.layers[0].weight, p.layers[0].bias), policy, (weight, bias))


def fold_observations(
    normalizer: ObservationNormalizer | None, policy: PyTree[Array]
) -> PyTree[Array]:
    """`normalizer.fold(policy)`, or ``policy`` itself without normalisation."""
    return policy if normalizer is None else normalizer.fold(policy)
