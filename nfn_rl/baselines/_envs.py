"""A batch of environments that reset themselves, as step-based learners (PPO, SAC) need.

Our environments have no auto-reset (EPVF rolls out one whole episode per policy). Here every
finished episode is replaced by a fresh one at once, and each transition records whether its
episode *terminated* (no bootstrapping from the next state) or was *truncated* at the horizon
(bootstrap from the last observation, which is kept before the reset overwrites it).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from nfn_rl.envs import Environment, EnvState


class EnvBatch(eqx.Module):
    """`num_envs` running episodes and their returns so far."""

    state: EnvState
    episode_return: Float[Array, " num_envs"]


class Transition(eqx.Module):
    """One step of every environment in a batch (leading `num_envs` axis on each field)."""

    obs: Float[Array, "num_envs obs"]
    next_obs: Float[Array, "num_envs obs"]
    reward: Float[Array, " num_envs"]
    terminated: Bool[Array, " num_envs"]
    done: Bool[Array, " num_envs"]
    finished_return: Float[Array, " num_envs"]
    """The return of the episode this step ended, NaN where it did not end one."""


def reset_batch(env: Environment, num_envs: int, *, key: PRNGKeyArray) -> EnvBatch:
    state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return EnvBatch(state, jnp.zeros(num_envs))


def step_batch(
    env: Environment, envs: EnvBatch, actions: Array, *, key: PRNGKeyArray
) -> tuple[EnvBatch, Transition]:
    """Step every environment with its action; finished episodes restart from `env.reset`."""
    num_envs = envs.episode_return.shape[0]
    nxt = jax.vmap(env.step)(envs.state, actions)
    # Our `done` includes the horizon; only an end before it is a termination.
    terminated = nxt.done & (nxt.step_count < env.horizon)
    total = envs.episode_return + nxt.reward
    transition = Transition(
        obs=envs.state.obs,
        next_obs=nxt.obs,
        reward=nxt.reward,
        terminated=terminated,
        done=nxt.done,
        finished_return=jnp.where(nxt.done, total, jnp.nan),
    )
    fresh = jax.vmap(env.reset)(jax.random.split(key, num_envs))

    def restart(new, old):
        mask = nxt.done.reshape(nxt.done.shape + (1,) * (new.ndim - 1))
        return jnp.where(mask, new, old)

    return EnvBatch(jax.tree.map(restart, fresh, nxt), jnp.where(nxt.done, 0.0, total)), transition
