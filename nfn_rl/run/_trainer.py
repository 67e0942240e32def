"""The one trainer design: an algorithm supplies `init`, `update` and `policy`; the abstract
`Trainer` owns the per-iteration keys, evaluation, jitted chunks and device placement."""

import abc
import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl.envs import Environment, episode_return
from nfn_rl.run._config import TrainConfig
from nfn_rl.run._report import CRITIC_QUALITY_COLUMNS

UPDATE_METRICS = (
    "episode_steps",
    "return_mean",
    "return_max",
    "critic_loss",
    "policy_lr",
    "nonfinite_returns",
    "skipped_updates",
)
"""The metrics `Trainer.update` returns; `Trainer.iteration` adds `eval_return` and
`evaluated`."""

CRITIC_QUALITY_METRICS = CRITIC_QUALITY_COLUMNS
"""The metrics of a critic of policies (EPVF) that `Trainer.update` may add: its R^2 and rank
correlation on an iteration's returns before it trains on them, and the cosine between its
policy gradient and the ES estimate from the same perturbations. NaN where `update` has none."""


class TrainState(eqx.Module):
    """What every training state carries; a checkpoint stores exactly the state.

    `key` is the raw data of the run key: iteration `i` draws its randomness from
    `fold_in(key, i)` alone, which makes resumed runs reproduce uninterrupted ones.
    """

    iteration: eqx.AbstractVar[Int[Array, ""]]
    key: eqx.AbstractVar[UInt32[Array, "..."]]


class Trainer(eqx.Module):
    """The pure pieces of one algorithm's training for one config and environment.

    An algorithm implements three methods: `init(key)` (the state of one seed, so that seeds
    are data and can be vmapped), `update(state, key)` (one iteration's data collection and
    learning, returning the `UPDATE_METRICS`) and `policy(state, index)` (a trained policy,
    callable on one observation as `nfn_rl.episode_return` expects). Everything else is shared
    and concrete here. Static parts are hashable metadata only: two trainers built from equal
    configs and environments compile once.
    """

    config: eqx.AbstractVar[TrainConfig]
    env: eqx.AbstractVar[Environment]
    mesh: eqx.AbstractVar[Mesh]
    num_policies: eqx.AbstractVar[int]
    """How many trained policies a state holds (evaluation averages over them)."""

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray) -> TrainState:
        """The initial state of the seed whose key is `key`."""

    @abc.abstractmethod
    def update(self, state: TrainState, key: PRNGKeyArray) -> tuple[TrainState, dict[str, Array]]:
        """One iteration's data collection and learning: the new state (`iteration` not yet
        advanced) and the metrics named in `UPDATE_METRICS`."""

    @abc.abstractmethod
    def policy(self, state: TrainState, index: Int[Array, ""] | int = 0) -> Callable:
        """Trained policy number `index` (of `num_policies`), callable on one observation."""

    def place(self, state: TrainState) -> TrainState:
        """`state` committed to the trainer's devices, replicated, as `run_chunk` returns it.

        A first call on uncommitted or single-device arrays would otherwise be lowered and
        compiled a second time once the state comes back replicated.
        """
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))

    def evaluate(self, state: TrainState, *, key: PRNGKeyArray) -> Float[Array, ""]:
        """Mean return of the trained policies over `eval_episodes` episodes each."""
        keys = jax.random.split(key, self.config.eval_episodes)

        def mean_return(index):
            policy = self.policy(state, index)
            return jnp.mean(jax.vmap(lambda k: episode_return(self.env, policy, k))(keys))

        return jnp.mean(jax.vmap(mean_return)(jnp.arange(self.num_policies)))

    def iteration(
        self, state: TrainState, index: Int[Array, ""]
    ) -> tuple[TrainState, dict[str, Array]]:
        """Iteration number `index` (equal to `state.iteration`): `update`, then an evaluation
        every `eval_interval` iterations (NaN otherwise).

        `index` is passed separately so that it stays unbatched if a caller vmaps states: the
        evaluation is then a real branch, not computed and discarded every time.
        """
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), index)
        update_key, eval_key = jax.random.split(key)
        state, metrics = self.update(state, update_key)
        for name in CRITIC_QUALITY_METRICS:
            metrics.setdefault(name, jnp.full((), jnp.nan, jnp.float32))
        evaluate = (index + 1) % self.config.eval_interval == 0
        metrics["eval_return"] = jax.lax.cond(
            evaluate, lambda: self.evaluate(state, key=eval_key), lambda: jnp.full((), jnp.nan)
        )
        metrics["evaluated"] = evaluate.astype(jnp.int32)
        state = dataclasses.replace(state, iteration=state.iteration + 1)
        return state, metrics

    def run_chunk(
        self, state: TrainState, start: Int[Array, ""]
    ) -> tuple[TrainState, dict[str, Array]]:
        """`log_interval` iterations from iteration `start` under `lax.scan`; metrics gain a
        leading iteration axis."""
        return jax.lax.scan(
            lambda s, i: self.iteration(s, i),
            state,
            start + jnp.arange(self.config.log_interval),
        )


def return_statistics(
    returns: Float[Array, "*episodes"], counted: Bool[Array, "*episodes"]
) -> dict[str, Array]:
    """`return_mean` and `return_max` over the `counted` finite returns (any shape), NaN when
    there are none (no episode ended, or every return was non-finite), and `nonfinite_returns`."""
    finite = counted & jnp.isfinite(returns)
    any_finite = jnp.any(finite)
    total = jnp.sum(jnp.where(finite, returns, 0.0))
    return {
        "return_mean": jnp.where(any_finite, total / jnp.maximum(jnp.sum(finite), 1), jnp.nan),
        "return_max": jnp.where(any_finite, jnp.max(jnp.where(finite, returns, -jnp.inf)), jnp.nan),
        "nonfinite_returns": jnp.sum(counted & ~jnp.isfinite(returns)),
    }


def static_part(build: Callable[[PRNGKeyArray], PyTree]) -> PyTree:
    """The non-array part of `build(key)` (activations, sizes), found from shapes alone without
    running or compiling any initialiser."""
    shapes = eqx.filter_eval_shape(build, jax.random.key(0))
    return eqx.filter(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct), inverse=True)


def default_device_mesh(algorithm: str = "this trainer") -> Mesh:
    """A mesh of the default device alone, for trainers that run on one device.

    Raises a ValueError in a multi-process run: the other processes would have no part in it.
    """
    if jax.process_count() > 1:
        raise ValueError(
            f"{algorithm} trains on one device and does not run across processes "
            f"({jax.process_count()} joined): run it as a single process"
        )
    return Mesh(np.array(jax.devices()[:1]), ("devices",))
