"""Episode returns of deterministic policies: the regression targets of an EPVF critic."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from nfn_rl.envs._gymnasium import GymnasiumEnv
from nfn_rl.envs._host import NativeAnt
from nfn_rl.envs._protocol import Environment, EnvState


def policy_action(env: Environment, policy: Callable, obs: Float[Array, " obs"]) -> Array:
    """The action `policy` takes at `obs`: the argmax of its logits if `env` is discrete, else its
    output (already in `[-1, 1]`)."""
    out = policy(obs)
    return jnp.argmax(out) if env.discrete else out


class EpisodeSummary(eqx.Module):
    """One episode's length and undiscounted return, and the sums of the observations the
    policy acted on over the steps counted in its length (the reset observation included, the
    one after the last step not): ``observation_sum / length`` is the episode's mean
    observation. What observation normalisation (`nfn_rl.population.ObservationNormalizer`)
    learns from. Under `vmap`, every field gains the batch axes."""

    length: Int[Array, "*batch"]
    total: Float[Array, "*batch"]
    observation_sum: Float[Array, "*batch obs"]
    observation_square_sum: Float[Array, "*batch obs"]


def episode_summary(env: Environment, policy: Callable, key: PRNGKeyArray) -> EpisodeSummary:
    """The `EpisodeSummary` of one episode of the deterministic `policy` in `env`.

    Runs a fixed `env.horizon` steps so that it vmaps over policies; transitions out of a done
    state count neither reward, steps nor observations. Non-finite rewards before the end
    propagate into the return so that callers can detect them. A `NativeAnt` plays MLP
    policies' episodes on MuJoCo's C engine instead (its reset is deterministic: `key` is
    unused), and a `GymnasiumEnv` on the host from the reset of `key`.
    """
    if isinstance(env, NativeAnt) and isinstance(policy, eqx.nn.MLP):
        return EpisodeSummary(*env.episode(policy, observation_sums=True))
    if isinstance(env, GymnasiumEnv):
        return EpisodeSummary(*env.episode(policy, key, observation_sums=True))

    def step(carry: tuple[EpisodeSummary, EnvState], _):
        summary, state = carry
        nxt = env.step(state, policy_action(env, policy, state.obs))
        live = ~state.done
        # `where`, not multiplication: rewards after the end may be NaN and must not leak in.
        observation = jnp.where(live, state.obs, 0.0)
        summary = EpisodeSummary(
            length=summary.length + live,
            total=summary.total + jnp.where(live, nxt.reward, 0.0),
            observation_sum=summary.observation_sum + observation,
            observation_square_sum=summary.observation_square_sum + observation**2,
        )
        return (summary, nxt), None

    zeros = jnp.zeros(env.observation_size)
    init = EpisodeSummary(jnp.zeros((), jnp.int32), jnp.zeros(()), zeros, zeros)
    (summary, _), _ = jax.lax.scan(step, (init, env.reset(key)), None, length=env.horizon)
    return summary


def episode_length_and_return(
    env: Environment, policy: Callable, key: PRNGKeyArray
) -> tuple[Int[Array, ""], Float[Array, ""]]:
    """The number of steps until the episode ends and its undiscounted return: the first two
    fields of `episode_summary` (the host envs then skip the observation sums)."""
    if isinstance(env, NativeAnt) and isinstance(policy, eqx.nn.MLP):
        return env.episode(policy)
    if isinstance(env, GymnasiumEnv):
        return env.episode(policy, key)
    summary = episode_summary(env, policy, key)
    return summary.length, summary.total


def episode_return(env: Environment, policy: Callable, key: PRNGKeyArray) -> Float[Array, ""]:
    """The undiscounted return of one episode of the deterministic `policy` in `env`.

    Vmap over policies by batching the policy's arrays, e.g.
    `jax.vmap(lambda p, k: episode_return(env, eqx.combine(p, static), k))(params, keys)`.
    """
    return episode_length_and_return(env, policy, key)[1]


def _random_action(env: Environment, key: PRNGKeyArray) -> Array:
    if env.discrete:
        return jax.random.randint(key, (), 0, env.action_size)
    return jax.random.uniform(key, (env.action_size,), minval=-1.0, maxval=1.0)


def observation_statistics(
    env: Environment, *, key: PRNGKeyArray, episodes: int = 16
) -> tuple[Float[Array, " obs"], Float[Array, " obs"]]:
    """Mean and standard deviation of each observation entry over the live steps of
    `episodes` episodes of uniformly random actions: the scale of what a policy sees.

    The standard deviation is at least 1e-3 (an entry that never moves). A `NativeAnt` plays
    the episodes on MuJoCo's C engine (the same actions, its own simulator; no MJX compiled).
    """

    def episode(key):
        reset_key, action_key = jax.random.split(key)
        action_keys = jax.random.split(action_key, env.horizon)

        def step(state: EnvState, step_key):
            return env.step(state, _random_action(env, step_key)), (state.obs, ~state.done)

        _, (obs, live) = jax.lax.scan(step, env.reset(reset_key), action_keys)
        return obs, live

    def open_loop_actions(key):
        action_keys = jax.random.split(jax.random.split(key)[1], env.horizon)
        return jax.vmap(lambda k: _random_action(env, k))(action_keys)

    keys = jax.random.split(key, episodes)
    if isinstance(env, NativeAnt):
        obs, live = env.open_loop_observations(jax.vmap(open_loop_actions)(keys))
    else:
        obs, live = jax.vmap(episode)(keys)
    obs, weight = obs.reshape(-1, obs.shape[-1]), live.reshape(-1, 1)
    count = jnp.maximum(jnp.sum(weight), 1)
    mean = jnp.sum(jnp.where(weight, obs, 0.0), axis=0) / count
    variance = jnp.sum(jnp.where(weight, (obs - mean) ** 2, 0.0), axis=0) / count
    return mean, jnp.maximum(jnp.sqrt(variance), 1e-3)
