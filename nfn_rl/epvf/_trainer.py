"""EPVF training (Algorithm 1) as a `Trainer`: perturb, roll out, fit the critic, ascend it."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl.envs import Environment, observation_statistics
from nfn_rl.epvf._config import EPVFConfig
from nfn_rl.epvf._critics import critic_options, make_critic, ridge_head
from nfn_rl.epvf._quality import cosine, r_squared, spearman
from nfn_rl.population import (
    ObservationNormalizer,
    PopulationTrainer,
    centered_ranks,
    es_estimate,
    make_policy,
    population_setup,
    shape_returns,
)
from nfn_rl.run import (
    FIFOBuffer,
    TrainState,
    make_buffer,
    skip_nonfinite,
    skipped_steps,
)

# The config fields that critics may take as options of the same name.
CRITIC_OPTION_FIELDS = (
    "probing_states",
    "unf_channels",
    "unf_depth",
    "unf_features",
    "unf_layer_norm",
    "canonicalize",
)


class EPVFState(TrainState):
    """Everything that changes during EPVF training.

    `policy` holds the policy arrays with a leading axis over the trained policies (1, or
    `num_envs` with `multiple_policies`). `buffer` holds `(policy arrays, return)` pairs;
    `observations` the observation normaliser (None without `observation_normalization`).
    """

    iteration: Int[Array, ""]
    key: UInt32[Array, "..."]
    policy: PyTree[Array]
    policy_opt_state: PyTree
    critic: PyTree[Array]
    critic_opt_state: PyTree
    buffer: FIFOBuffer
    observations: ObservationNormalizer | None


def _critic_optimizer(config: EPVFConfig) -> optax.GradientTransformation:
    return skip_nonfinite(optax.adam(config.critic_lr))


class EPVFTrainer(PopulationTrainer):
    """EPVF for one config and environment (build with `nfn_rl.make_trainer`).

    `mesh` is a 1-D mesh over all devices (axis `"envs"`), of every process in a multi-process
    run: the rollouts and the critic batches are split evenly across it, everything else is
    replicated.
    """

    config: EPVFConfig = eqx.field(static=True)
    env: Environment
    mesh: Mesh = eqx.field(static=True)
    policy_static: PyTree
    critic_static: PyTree
    buffer_capacity: int = eqx.field(static=True)

    @property
    def num_policies(self) -> int:
        return self.config.num_envs if self.config.multiple_policies else 1

    def init(self, key: PRNGKeyArray) -> EPVFState:
        config = self.config
        policy_key, critic_key, stats_key, run_key = jax.random.split(key, 4)
        policies, policy_opt_state = self.initial_policy_state(policy_key)
        example = eqx.combine(jax.tree.map(lambda x: x[0], policies), self.policy_static)
        critic = _make_critic(config, self.env, example, key=critic_key, stats_key=stats_key)
        critic = eqx.filter(critic, eqx.is_array)
        return EPVFState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            policy=policies,
            policy_opt_state=policy_opt_state,
            critic=critic,
            critic_opt_state=_critic_optimizer(config).init(critic),
            buffer=make_buffer(
                (jax.tree.map(lambda x: x[0], policies), jnp.zeros(())), self.buffer_capacity
            ),
            observations=self.initial_observations(),
        )

    def _critic(self, critic: PyTree[Array]):
        return eqx.combine(critic, self.critic_static)

    def _value(self, critic: PyTree[Array], params: PyTree[Array]) -> Float[Array, " n"]:
        return self.value_of(self._critic(critic), params)

    def critic_update(
        self, state: EPVFState, *, key: PRNGKeyArray
    ) -> tuple[EPVFState, Float[Array, ""]]:
        """`critic_steps` Adam steps on batches from the buffer (then, with `critic_ridge`, the
        last layer refitted in closed form on one more batch); returns the new state and the
        mean loss over the finite steps (NaN if none was, or the buffer is empty)."""
        config = self.config
        optimizer = _critic_optimizer(config)

        def loss_fn(critic, params, returns, valid):
            targets = shape_returns(config.critic_targets, returns, valid)
            error = jnp.where(valid, self._value(critic, params) - targets, 0.0)
            return jnp.sum(error**2) / jnp.maximum(jnp.sum(valid), 1)

        def step(carry, step_key):
            critic, opt_state = carry
            # The gradient is a sum over the batch: each device takes its part of the batch, and
            # the partial gradients are summed across devices.
            (params, returns), valid = self.split(
                state.buffer.sample(config.batch_size, key=step_key)
            )
            loss, grads = jax.value_and_grad(loss_fn)(critic, params, returns, valid)
            updates, opt_state = optimizer.update(grads, opt_state, critic)
            # An empty buffer fits nothing: its loss is NaN, not 0.
            loss = jnp.where(jnp.any(valid), loss, jnp.nan)
            return (optax.apply_updates(critic, updates), opt_state), loss

        steps_key, ridge_key = jax.random.split(key)
        keys = jax.random.split(steps_key, config.critic_steps)
        (critic, opt_state), losses = jax.lax.scan(
            step, (state.critic, state.critic_opt_state), keys
        )
        if config.critic_ridge is not None:
            critic = self._ridge(state.buffer, critic, key=ridge_key)
        finite = jnp.isfinite(losses)
        mean_loss = jnp.sum(jnp.where(finite, losses, 0.0)) / jnp.sum(finite)
        return dataclasses.replace(state, critic=critic, critic_opt_state=opt_state), mean_loss

    def _ridge(self, buffer: FIFOBuffer, critic: PyTree[Array], *, key) -> PyTree[Array]:
        """`critic` with its last layer the ridge regression on a batch from `buffer` (left as
        it is while the buffer is empty)."""
        (params, returns), valid = self.split(buffer.sample(self.config.batch_size, key=key))
        model = self._critic(critic)
        features = self.value_of(model.head_features, params)
        targets = shape_returns(self.config.critic_targets, returns, valid)
        fitted = ridge_head(model, features, targets, valid, penalty=self.config.critic_ridge)
        fitted = eqx.filter(fitted, eqx.is_array)
        return jax.tree.map(lambda new, old: jnp.where(jnp.any(valid), new, old), fitted, critic)

    def policy_update(self, state: EPVFState) -> EPVFState:
        """`policy_steps` steps ascending the (frozen) critic, then weight clipping."""

        def loss_fn(policy):
            # A sum, not a mean: each trained policy ascends its own value.
            return -jnp.sum(self._value(state.critic, policy))

        policy, opt_state = self.policy_steps(
            state.policy,
            state.policy_opt_state,
            state.iteration,
            jax.grad(loss_fn),
            steps=self.config.policy_steps,
        )
        return dataclasses.replace(state, policy=policy, policy_opt_state=opt_state)

    def critic_quality(
        self,
        critic: PyTree[Array],
        candidates: PyTree[Array],
        returns: Float[Array, " envs"],
        valid: Bool[Array, " envs"],
    ) -> dict[str, Float[Array, ""]]:
        """How well `critic` predicts this iteration's `returns` of the `candidates` (before
        it trains on them): `critic_r2_unseen` and `critic_spearman_unseen`, in the units of
        `critic_targets`.

        Standardised and centred-rank targets have mean 0 in every batch by construction, so
        their level carries nothing to predict: for them the predictions are compared after
        subtracting their own mean over the batch (a critic that only gets the level wrong
        still has R^2 below 0 in raw returns).
        """
        predictions = self._value(critic, candidates)
        targets = shape_returns(self.config.critic_targets, returns, valid)
        if self.config.critic_targets != "returns":
            level = jnp.sum(jnp.where(valid, predictions, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
            predictions = predictions - level
        return {
            "critic_r2_unseen": r_squared(predictions, targets, valid),
            "critic_spearman_unseen": spearman(predictions, targets, valid),
        }

    def es_cosine(
        self,
        critic: PyTree[Array],
        centre: PyTree[Array],
        candidates: PyTree[Array],
        returns: Float[Array, " envs"],
        valid: Bool[Array, " envs"],
    ) -> Float[Array, ""]:
        """The cosine between the critic's gradient at the `centre` policy and OpenAI-ES's
        estimate from the same candidates (centred ranks of their returns)."""
        estimate = es_estimate(centre, candidates, centered_ranks(returns, valid), valid)
        model = self._critic(critic)
        gradient = jax.grad(lambda p: model(eqx.combine(p, self.policy_static)))(centre)
        return cosine(ravel_pytree(gradient)[0], ravel_pytree(estimate)[0])

    def update(self, state: EPVFState, key: PRNGKeyArray) -> tuple[EPVFState, dict[str, Array]]:
        config = self.config
        rollout_key, critic_key = jax.random.split(key)
        skipped_before = skipped_steps(state.critic_opt_state) + skipped_steps(
            state.policy_opt_state
        )
        population = self.collect(
            state.policy,
            key=rollout_key,
            observations=state.observations,
            multiple_policies=config.multiple_policies,
        )
        candidates, returns = population.params, self.learning_returns(population)
        # Non-finite returns would poison every later critic fit: they never enter the buffer.
        finite = jnp.isfinite(returns)
        quality = self.critic_quality(state.critic, candidates, returns, finite)
        buffer = state.buffer.insert((candidates, returns), finite)
        state = dataclasses.replace(state, buffer=buffer, observations=population.observations)
        state, critic_loss = self.critic_update(state, key=critic_key)
        if config.multiple_policies:
            # Each policy has one perturbation: there is no ES estimate to compare with.
            quality["critic_es_cosine"] = jnp.asarray(jnp.nan, jnp.float32)
        else:
            centre = jax.tree.map(lambda x: x[0], state.policy)
            quality["critic_es_cosine"] = self.es_cosine(
                state.critic, centre, candidates, returns, finite
            )
        state = self.policy_update(state)
        skipped = (
            skipped_steps(state.critic_opt_state)
            + skipped_steps(state.policy_opt_state)
            - skipped_before
        )
        metrics = quality | self.iteration_metrics(
            population, state.iteration, critic_loss=critic_loss, skipped_updates=skipped
        )
        # Replicated at the end of every iteration: the buffer and the update need all of this
        # iteration's rollouts on every device.
        return self.replicate(state), metrics


def make_epvf(config: EPVFConfig, env: Environment | None = None) -> EPVFTrainer:
    """The EPVF trainer for `config`, on `env` or else on `make_env(config.env, config.horizon)`.

    It trains on all devices (`EPVFTrainer.mesh`), so `num_envs` and `batch_size` must be
    multiples of the device count (else a ValueError); the environment's arrays are replicated.
    On an Ant, the trainer's config names the simulator used (`backend` "native" or "mjx", never
    "auto"), which `config.json` and the checkpoints record.
    """
    if not isinstance(config, EPVFConfig):
        raise TypeError(f"make_epvf needs an EPVFConfig, got {type(config).__name__}")
    config, env, mesh = population_setup(config, env, ("num_envs", "batch_size"))

    def build(key):
        policy = make_policy(env, config.policy_width, config.policy_depth, key=key)
        return policy, _make_critic(config, env, policy, key=key, stats_key=None)

    # Only the structure is needed here; shapes alone avoid compiling the initialisers.
    policy, critic = eqx.filter_eval_shape(build, jax.random.key(0))

    def is_shape(x):
        return isinstance(x, jax.ShapeDtypeStruct)

    return EPVFTrainer(
        config=config,
        env=env,
        mesh=mesh,
        policy_static=eqx.filter(policy, is_shape, inverse=True),
        critic_static=eqx.filter(critic, is_shape, inverse=True),
        # Slots past the total number of rollouts would never be filled: not allocating them
        # keeps memory and checkpoints small without changing what is sampled.
        buffer_capacity=min(config.buffer_size, config.iterations * config.num_envs),
    )


def _make_critic(
    config: EPVFConfig,
    env: Environment,
    policy: eqx.nn.MLP,
    *,
    key: PRNGKeyArray,
    stats_key: PRNGKeyArray | None,
):
    """`config`'s critic for policies shaped like `policy` (see `_critic_options`)."""
    return make_critic(
        config.critic,
        policy,
        key=key,
        width=config.critic_width,
        depth=config.critic_depth,
        **_critic_options(config, env, key=stats_key),
    )


def _critic_options(config: EPVFConfig, env: Environment, *, key: PRNGKeyArray | None) -> dict:
    """The config's values of the options critic `config.critic` accepts. Observation
    statistics are measured with `key`, or are placeholders without one (enough to find the
    critic's structure). With `observation_normalization` the policies act on normalised
    observations, whose statistics are mean 0 and std 1 by construction."""
    accepted = critic_options(config.critic)
    options = {name: getattr(config, name) for name in CRITIC_OPTION_FIELDS if name in accepted}
    if "observation_stats" in accepted:
        zeros = jnp.zeros(env.observation_size)
        if config.observation_normalization:
            options["observation_stats"] = (zeros, jnp.ones(env.observation_size))
        elif key is None:
            options["observation_stats"] = (zeros, zeros)
        else:
            options["observation_stats"] = observation_statistics(env, key=key)
    return options
