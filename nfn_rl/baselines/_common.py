"""What the PPO and SAC trainers share: the trainer interface, keys, episode metrics and
evaluation of the deterministic policy."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from nfn_rl._rollout import episode_return
from nfn_rl.baselines._config import BaselineConfig
from nfn_rl.baselines._envs import Transition
from nfn_rl.envs import Environment


def static_part(build: Callable[[PRNGKeyArray], PyTree]) -> PyTree:
    """The non-array part of `build(key)`, found without running any initialiser."""
    shapes = eqx.filter_eval_shape(build, jax.random.key(0))
    return eqx.filter(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct), inverse=True)


def episode_metrics(transitions: Transition) -> dict[str, Array]:
    """Return statistics of the (stochastic) training episodes that ended in `transitions`."""
    ended = transitions.done & jnp.isfinite(transitions.finished_return)
    returns = jnp.where(ended, transitions.finished_return, 0.0)
    any_ended = jnp.any(ended)
    return {
        # NaN, not 0, when no episode ended in this iteration.
        "return_mean": jnp.where(
            any_ended, jnp.sum(returns) / jnp.maximum(jnp.sum(ended), 1), jnp.nan
        ),
        "return_max": jnp.where(any_ended, jnp.max(jnp.where(ended, returns, -jnp.inf)), jnp.nan),
        "nonfinite_returns": jnp.sum(transitions.done & ~jnp.isfinite(transitions.finished_return)),
    }


class BaselineState(eqx.Module):
    """The arrays of a baseline's training state; a checkpoint stores exactly this.

    `key` is the raw data of the run key; iteration `i` draws from `fold_in(key, i)` alone.
    """

    iteration: eqx.AbstractVar[Int[Array, ""]]
    key: eqx.AbstractVar[Array]


class BaselineTrainer(eqx.Module):
    """The pure pieces of one baseline's training; the host loop is `nfn_rl.baselines.train`."""

    config: eqx.AbstractVar[BaselineConfig]
    env: eqx.AbstractVar[Environment]

    @abc.abstractmethod
    def init(self) -> BaselineState:
        """The initial state for `config.seed`."""

    @abc.abstractmethod
    def update(self, state: BaselineState, key: PRNGKeyArray) -> tuple[BaselineState, dict]:
        """Collect one iteration's transitions and learn from them; returns the new state
        (iteration not yet advanced) and the iteration's metrics except the evaluation."""

    @abc.abstractmethod
    def policy(self, state: BaselineState) -> eqx.Module:
        """The deterministic policy of `state` (callable on one observation)."""

    def place(self, state: BaselineState) -> BaselineState:
        """`state` committed to the default device, as `run_chunk` returns it (a first call on
        uncommitted arrays would be compiled a second time). Baselines train on one device."""
        return jax.device_put(state, jax.devices()[0])

    def evaluate(self, state: BaselineState, *, key: PRNGKeyArray) -> Float[Array, ""]:
        """Mean return of the deterministic policy over `eval_episodes` episodes."""
        policy = self.policy(state)
        keys = jax.random.split(key, self.config.eval_episodes)
        return jnp.mean(jax.vmap(lambda k: episode_return(self.env, policy, k))(keys))

    def iteration(self, state: BaselineState) -> tuple[BaselineState, dict[str, Array]]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.iteration)
        update_key, eval_key = jax.random.split(key)
        state, metrics = self.update(state, update_key)
        evaluate = (state.iteration + 1) % self.config.eval_interval == 0
        metrics["eval_return"] = jax.lax.cond(
            evaluate, lambda: self.evaluate(state, key=eval_key), lambda: jnp.full((), jnp.nan)
        )
        metrics["episode_steps"] = jnp.asarray(self.config.steps_per_iteration)
        metrics["policy_lr"] = jnp.asarray(self.config.learning_rate)
        state = eqx.tree_at(lambda s: s.iteration, state, state.iteration + 1)
        return state, metrics

    def run_chunk(self, state: BaselineState) -> tuple[BaselineState, dict[str, Array]]:
        """`log_interval` iterations under `lax.scan`; metrics gain a leading iteration axis."""
        return jax.lax.scan(
            lambda s, _: self.iteration(s), state, None, length=self.config.log_interval
        )
