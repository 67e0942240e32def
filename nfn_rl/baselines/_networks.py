"""The networks and action distributions PPO and SAC share: running observation statistics,
tanh-squashed Gaussian and categorical policies, and the deterministic policy they evaluate as."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from nfn_rl.envs import Environment

_MIN_STD = 1e-3
_OBS_CLIP = 10.0


class Normalizer(eqx.Module):
    """Running mean and variance of observations (Chan et al.'s parallel update).

    Observations are standardised and clipped to [-10, 10]. A disabled normaliser (`enabled`
    False) passes observations through and ignores updates.
    """

    count: Float[Array, ""]
    mean: Float[Array, " obs"]
    variance: Float[Array, " obs"]
    enabled: bool = eqx.field(static=True)

    @classmethod
    def init(cls, size: int, *, enabled: bool) -> "Normalizer":
        return cls(jnp.zeros(()), jnp.zeros(size), jnp.ones(size), enabled)

    def update(self, batch: Float[Array, "n obs"]) -> "Normalizer":
        if not self.enabled:
            return self
        n = batch.shape[0]
        batch_mean = jnp.mean(batch, axis=0)
        batch_variance = jnp.var(batch, axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        # Sums of squared deviations: the stored variance is the population one.
        m2 = self.variance * self.count + batch_variance * n + delta**2 * self.count * n / total
        return Normalizer(total, mean, m2 / total, self.enabled)

    def __call__(self, obs: Float[Array, " obs"]) -> Float[Array, " obs"]:
        if not self.enabled:
            return obs
        scaled = (obs - self.mean) / jnp.sqrt(self.variance + 1e-8)
        return jnp.clip(scaled, -_OBS_CLIP, _OBS_CLIP)


def mlp(
    in_size: int, out_size: int | Literal["scalar"], width: int, depth: int, *, key: PRNGKeyArray
) -> eqx.nn.MLP:
    """A SiLU MLP with `depth` hidden layers of `width` (`depth=0` is a linear map)."""
    return eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.silu, key=key)


class TanhGaussian(eqx.Module):
    """`tanh(u)` with `u ~ N(mean, std^2)`: continuous actions in (-1, 1).

    Samples are returned with their pre-squash value `u`, from which log-probabilities are exact
    (no `atanh` of a saturated action).
    """

    mean: Float[Array, " action"]
    std: Float[Array, " action"]

    @classmethod
    def from_output(cls, out: Float[Array, " twice_action"]) -> "TanhGaussian":
        mean, raw_std = jnp.split(out, 2)
        return cls(mean, jax.nn.softplus(raw_std) + _MIN_STD)

    def sample(self, *, key: PRNGKeyArray) -> Float[Array, " action"]:
        """A pre-squash sample `u` (the action is `tanh(u)`)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape)

    def log_prob(self, u: Float[Array, " action"]) -> Float[Array, ""]:
        """Log-density of the action `tanh(u)` (change of variables included)."""
        gaussian = -0.5 * ((u - self.mean) / self.std) ** 2 - jnp.log(self.std)
        gaussian = gaussian - 0.5 * jnp.log(2 * jnp.pi)
        # log(1 - tanh(u)^2), written stably.
        log_jacobian = 2 * (jnp.log(2.0) - u - jax.nn.softplus(-2 * u))
        return jnp.sum(gaussian - log_jacobian)

    def entropy(self) -> Float[Array, ""]:
        """Entropy of the pre-squash Gaussian (the usual PPO bonus for squashed policies)."""
        return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(self.std))

    @staticmethod
    def to_action(u: Float[Array, " action"]) -> Float[Array, " action"]:
        return jnp.tanh(u)

    def mode(self) -> Float[Array, " action"]:
        return jnp.tanh(self.mean)


class Categorical(eqx.Module):
    """A distribution over `len(logits)` discrete actions."""

    logits: Float[Array, " action"]

    @classmethod
    def from_output(cls, out: Float[Array, " action"]) -> "Categorical":
        return cls(out)

    def sample(self, *, key: PRNGKeyArray) -> Int[Array, ""]:
        return jax.random.categorical(key, self.logits)

    def log_prob(self, action: Int[Array, ""]) -> Float[Array, ""]:
        return jax.nn.log_softmax(self.logits)[action]

    def entropy(self) -> Float[Array, ""]:
        log_p = jax.nn.log_softmax(self.logits)
        return -jnp.sum(jnp.exp(log_p) * log_p)

    @staticmethod
    def to_action(action: Int[Array, ""]) -> Int[Array, ""]:
        return action

    def mode(self) -> Int[Array, ""]:
        """The most likely action."""
        return jnp.argmax(self.logits)


def distribution_type(env: Environment) -> type[TanhGaussian] | type[Categorical]:
    return Categorical if env.discrete else TanhGaussian


def policy_output_size(env: Environment) -> int:
    """Logits for discrete actions; mean and pre-softplus std for continuous ones."""
    return env.action_size if env.discrete else 2 * env.action_size


class DeterministicPolicy(eqx.Module):
    """A trained stochastic policy acting with its mode, as `nfn_rl.episode_return` expects:
    actions in [-1, 1] for continuous environments, logits for discrete ones."""

    net: eqx.nn.MLP
    normalizer: Normalizer
    discrete: bool = eqx.field(static=True)

    def __call__(self, obs: Float[Array, " obs"]) -> Float[Array, " action"]:
        out = self.net(self.normalizer(obs))
        # Discrete: the logits themselves, whose argmax (the categorical's mode) is the action
        # `nfn_rl.episode_return` takes.
        return out if self.discrete else TanhGaussian.from_output(out).mode()
