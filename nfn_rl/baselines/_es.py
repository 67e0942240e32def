"""OpenAI-ES (Salimans et al., 2017) on the populations EPVF rolls out: the critic-free anchor.

The same environment, policy, noise family, weight clip, learning-rate schedule and number of
policies per iteration as an EPVF config with the same `PerturbationConfig` fields, so that the
two differ only in how the returns become a policy step: ES weighs each perturbation by its
shaped return (centred ranks), EPVF ascends a critic fitted to them.

Written with Optax rather than taken from evosax: evosax's OpenAI-ES samples isotropic Gaussian
noise of one scale and has no weight clip, so it cannot draw EPVF's U(-s|w|, s|w|) populations,
and it brings flax, orbax-checkpoint, tensorstore and protobuf among 16 packages
(docs/baselines.md).
"""

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl.envs import Environment
from nfn_rl.population import (
    SHAPINGS,
    ObservationNormalizer,
    PerturbationConfig,
    PopulationTrainer,
    es_estimate,
    make_policy,
    population_setup,
    shape_returns,
)
from nfn_rl.run import TrainState, skipped_steps, static_part
from nfn_rl.run._config import check_choice


@dataclasses.dataclass(frozen=True)
class ESConfig(PerturbationConfig):
    """OpenAI-ES: antithetic pairs, centred-rank fitness, one Adam step per iteration along
    the mean of the perturbations weighted by their fitness, then the weight clip.

    Attributes:
        fitness_shaping: what the returns become before they weigh the perturbations:
            "centered_ranks" (OpenAI-ES), "standardized" or "returns".
    """

    algo: ClassVar[str] = "es"

    num_envs: int = 64
    antithetic: bool = True
    policy_lr: float = 1e-2
    policy_lr_end: float = 1e-2
    fitness_shaping: str = "centered_ranks"

    def __post_init__(self):
        super().__post_init__()
        check_choice("ESConfig", "fitness_shaping", self.fitness_shaping, SHAPINGS)


class ESState(TrainState):
    """`policy` holds the policy arrays with a leading axis of one (as EPVF's state);
    `observations` the observation normaliser (None without `observation_normalization`)."""

    iteration: Int[Array, ""]
    key: UInt32[Array, "..."]
    policy: PyTree[Array]
    policy_opt_state: PyTree
    observations: ObservationNormalizer | None


class ESTrainer(PopulationTrainer):
    """OpenAI-ES for one config and environment (build with `nfn_rl.make_trainer`)."""

    config: ESConfig = eqx.field(static=True)
    env: Environment
    mesh: Mesh = eqx.field(static=True)
    policy_static: PyTree

    @property
    def num_policies(self) -> int:
        return 1

    def init(self, key: PRNGKeyArray) -> ESState:
        policy_key, run_key = jax.random.split(key)
        policies, opt_state = self.initial_policy_state(policy_key)
        return ESState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            policy=policies,
            policy_opt_state=opt_state,
            observations=self.initial_observations(),
        )

    def update(self, state: ESState, key: PRNGKeyArray) -> tuple[ESState, dict[str, Array]]:
        config = self.config
        skipped_before = skipped_steps(state.policy_opt_state)
        population = self.collect(state.policy, key=key, observations=state.observations)
        candidates, returns = population.params, self.learning_returns(population)
        finite = jnp.isfinite(returns)
        centre = jax.tree.map(lambda x: x[0], state.policy)
        fitness = shape_returns(config.fitness_shaping, returns, finite)
        ascent = es_estimate(centre, candidates, fitness, finite)
        # The optimiser minimises: its gradient is the negated ascent direction.
        descent = jax.tree.map(lambda g: -g[None], ascent)
        policy, opt_state = self.policy_steps(
            state.policy, state.policy_opt_state, state.iteration, lambda _: descent, steps=1
        )
        state = dataclasses.replace(
            state, policy=policy, policy_opt_state=opt_state, observations=population.observations
        )
        metrics = self.iteration_metrics(
            population,
            state.iteration,
            critic_loss=jnp.asarray(jnp.nan, jnp.float32),
            skipped_updates=skipped_steps(opt_state) - skipped_before,
        )
        return self.replicate(state), metrics


def make_es(config: ESConfig, env: Environment | None = None) -> ESTrainer:
    """The ES trainer for `config`, on `env` or else on `make_env(config.env, config.horizon)`;
    like EPVF it splits each iteration's rollouts over all devices (`num_envs` must be a
    multiple of their number)."""
    if not isinstance(config, ESConfig):
        raise TypeError(f"make_es needs an ESConfig, got {type(config).__name__}")
    config, env, mesh = population_setup(config, env)
    policy_static = static_part(
        lambda key: make_policy(env, config.policy_width, config.policy_depth, key=key)
    )
    return ESTrainer(config=config, env=env, mesh=mesh, policy_static=policy_static)
