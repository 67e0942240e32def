"""EPVF training (Algorithm 1): jitted chunks of iterations, and a host loop that records a run."""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray, PyTree, UInt32

from nfn_rl import _loop
from nfn_rl._buffer import ReplayBuffer, make_buffer
from nfn_rl._config import EPVFConfig
from nfn_rl._critic_registry import make_critic
from nfn_rl._guards import all_finite, select
from nfn_rl._perturb import perturb_population
from nfn_rl._policy import make_policy
from nfn_rl._rollout import episode_length_and_return
from nfn_rl.envs import Environment, make_env

CHECKPOINT_FORMAT = "nfn_rl.epvf.checkpoint/1"

# The one mesh axis: the environments (perturbed policies) of an iteration and the critic batch
# are split along it; everything else is replicated on every device.
ENVS_AXIS = "envs"


class TrainState(eqx.Module):
    """Everything that changes during training; a checkpoint stores exactly this.

    `policy` holds the policy arrays with a leading axis over the trained policies (1, or
    `num_envs` with `multiple_policies`). `key` is the raw data of the run key; iteration `i`
    draws its randomness from `fold_in(key, i)` alone, which makes resumed runs reproduce
    uninterrupted ones.
    """

    iteration: Int[Array, ""]
    policy: PyTree[Array]
    policy_opt_state: PyTree
    critic: PyTree[Array]
    critic_opt_state: PyTree
    buffer: ReplayBuffer
    key: UInt32[Array, "..."]


def policy_lr_at(config: EPVFConfig, iteration: Int[Array, ""] | int) -> Float[Array, ""]:
    """The policy learning rate used during `iteration` (exponential: `policy_lr` at the first
    iteration, `policy_lr_end` at the last)."""
    if config.policy_lr_schedule == "constant":
        return jnp.asarray(config.policy_lr, jnp.float32)
    fraction = jnp.asarray(iteration, jnp.float32) / max(config.iterations - 1, 1)
    return config.policy_lr * (config.policy_lr_end / config.policy_lr) ** fraction


def _policy_optimizer(config: EPVFConfig) -> optax.GradientTransformation:
    # The learning rate is a hyperparameter set from the iteration number before each iteration's
    # policy steps, so that skipped (non-finite) steps cannot shift the schedule.
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=config.policy_lr, weight_decay=config.weight_decay
    )


def _critic_optimizer(config: EPVFConfig) -> optax.GradientTransformation:
    return optax.adam(config.critic_lr)


class EPVFTrainer(eqx.Module):
    """The pure pieces of EPVF training for one config and environment (build with `make_train`).

    Its static parts are hashable metadata only: two trainers built from equal configs and
    environments hit the same cache entry of `run_chunk` and compile once.

    `mesh` is a 1-D mesh over all devices (axis `"envs"`): the rollouts and the critic batches
    are split evenly across it, everything else is replicated (`place` puts a state there).
    """

    config: EPVFConfig = eqx.field(static=True)
    env: Environment
    policy_static: PyTree
    critic_static: PyTree
    buffer_capacity: int = eqx.field(static=True)
    mesh: Mesh = eqx.field(static=True)

    @property
    def num_policies(self) -> int:
        return self.config.num_envs if self.config.multiple_policies else 1

    def _split(self, tree: PyTree) -> PyTree:
        """`tree` with the leading axis of every array split across the devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec(ENVS_AXIS))
        return jax.lax.with_sharding_constraint(tree, sharding)

    def _replicate(self, tree: PyTree) -> PyTree:
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.lax.with_sharding_constraint(tree, sharding)

    def place(self, state: TrainState) -> TrainState:
        """`state` committed to the trainer's devices, replicated: as `run_chunk` returns it.

        A first call on uncommitted or single-device arrays would otherwise be lowered and
        compiled a second time (~1 min for the MJX Ant) once the state comes back replicated.
        """
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))

    def init(self) -> TrainState:
        """The initial state for `config.seed`."""
        config = self.config
        policy_key, critic_key, run_key = jax.random.split(jax.random.key(config.seed), 3)
        policies = jax.vmap(
            lambda k: eqx.filter(make_policy(self.env, config.policy_hidden, key=k), eqx.is_array)
        )(jax.random.split(policy_key, self.num_policies))
        example = eqx.combine(jax.tree.map(lambda x: x[0], policies), self.policy_static)
        critic = eqx.filter(
            make_critic(config.critic, example, key=critic_key, hidden=config.critic_hidden),
            eqx.is_array,
        )
        return TrainState(
            iteration=jnp.zeros((), jnp.int32),
            policy=policies,
            policy_opt_state=_policy_optimizer(config).init(policies),
            critic=critic,
            critic_opt_state=_critic_optimizer(config).init(critic),
            buffer=make_buffer(jax.tree.map(lambda x: x[0], policies), self.buffer_capacity),
            key=jax.random.key_data(run_key),
        )

    def policy(self, state: TrainState, index: int = 0) -> eqx.nn.MLP:
        """Trained policy number `index` (always 0 unless `multiple_policies`)."""
        return eqx.combine(jax.tree.map(lambda x: x[index], state.policy), self.policy_static)

    def iteration_keys(self, state: TrainState) -> tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]:
        """The (rollout, critic, evaluation) keys of the state's iteration."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.iteration)
        rollout_key, critic_key, eval_key = jax.random.split(key, 3)
        return rollout_key, critic_key, eval_key

    def _returns(
        self, params: PyTree[Array], keys: Key[Array, " n"]
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
        return jax.vmap(
            lambda p, k: episode_length_and_return(self.env, eqx.combine(p, self.policy_static), k)
        )(params, keys)

    def collect(
        self, state: TrainState, *, key: PRNGKeyArray
    ) -> tuple[PyTree[Array], Int[Array, " envs"], Float[Array, " envs"]]:
        """Perturb the current policy (or each policy), roll every perturbation out once.

        Returns the perturbed parameters (leading axis `num_envs`), episode lengths and returns.
        """
        config = self.config
        perturb_key, rollout_key = jax.random.split(key)
        centre = state.policy
        if not config.multiple_policies:
            centre = jax.tree.map(lambda x: x[0], centre)
        candidates = perturb_population(
            centre,
            config.num_envs,
            key=perturb_key,
            multiple_policies=config.multiple_policies,
            noise=config.noise,
            scale=config.noise_scale,
            clip=config.perturbation_clip,
        )
        candidates = self._split(candidates)
        keys = self._split(jax.random.split(rollout_key, config.num_envs))
        lengths, returns = self._split(self._returns(candidates, keys))
        return candidates, lengths, returns

    def _value(self, critic: PyTree[Array], params: PyTree[Array]) -> Float[Array, " n"]:
        critic = eqx.combine(critic, self.critic_static)
        return jax.vmap(lambda p: critic(eqx.combine(p, self.policy_static)))(params)

    def critic_update(
        self, state: TrainState, *, key: PRNGKeyArray
    ) -> tuple[TrainState, Float[Array, ""], Int[Array, ""]]:
        """`critic_steps` Adam steps on batches from the buffer.

        Returns the new state, the mean loss over the finite steps and the number of steps
        skipped because their loss or gradient was not finite.
        """
        optimizer = _critic_optimizer(self.config)

        def loss_fn(critic, params, returns, valid):
            error = jnp.where(valid, self._value(critic, params) - returns, 0.0)
            return jnp.sum(error**2) / jnp.maximum(jnp.sum(valid), 1)

        def step(carry, step_key):
            critic, opt_state = carry
            # The gradient is a sum over the batch: each device takes its part of the batch, and
            # the partial gradients are summed across devices.
            batch = self._split(state.buffer.sample(self.config.batch_size, key=step_key))
            loss, grads = jax.value_and_grad(loss_fn)(critic, *batch)
            updates, new_opt_state = optimizer.update(grads, opt_state, critic)
            new = (optax.apply_updates(critic, updates), new_opt_state)
            ok = jnp.isfinite(loss) & all_finite(grads)
            return select(ok, new, carry), (loss, ok)

        keys = jax.random.split(key, self.config.critic_steps)
        (critic, opt_state), (losses, ok) = jax.lax.scan(
            step, (state.critic, state.critic_opt_state), keys
        )
        mean_loss = jnp.sum(jnp.where(ok, losses, 0.0)) / jnp.sum(ok)
        state = dataclasses.replace(state, critic=critic, critic_opt_state=opt_state)
        return state, mean_loss, jnp.sum(~ok)

    def policy_update(self, state: TrainState) -> tuple[TrainState, Int[Array, ""]]:
        """`policy_steps` steps ascending the (frozen) critic, then weight clipping.

        Returns the new state and the number of steps skipped for non-finite gradients.
        """
        optimizer = _policy_optimizer(self.config)
        opt_state = state.policy_opt_state
        hyperparams = opt_state.hyperparams | {
            "learning_rate": policy_lr_at(self.config, state.iteration)
        }
        opt_state = opt_state._replace(hyperparams=hyperparams)

        def loss_fn(policy):
            # A sum, not a mean: each trained policy ascends its own value.
            return -jnp.sum(self._value(state.critic, policy))

        def step(carry, _):
            policy, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(policy)
            updates, new_opt_state = optimizer.update(grads, opt_state, policy)
            new = (optax.apply_updates(policy, updates), new_opt_state)
            ok = jnp.isfinite(loss) & all_finite(grads)
            return select(ok, new, carry), ok

        (policy, opt_state), ok = jax.lax.scan(
            step, (state.policy, opt_state), None, length=self.config.policy_steps
        )
        clip = self.config.weight_clip
        if clip is not None:
            policy = jax.tree.map(lambda x: jnp.clip(x, -clip, clip), policy)
        state = dataclasses.replace(state, policy=policy, policy_opt_state=opt_state)
        return state, jnp.sum(~ok)

    def evaluate(self, state: TrainState, *, key: PRNGKeyArray) -> Float[Array, ""]:
        """Mean return of the unperturbed policies over `eval_episodes` initial states."""
        keys = jax.random.split(key, self.config.eval_episodes)

        def mean_return(params):
            policy = eqx.combine(params, self.policy_static)
            episode = jax.vmap(lambda k: episode_length_and_return(self.env, policy, k)[1])
            return jnp.mean(episode(keys))

        return jnp.mean(jax.vmap(mean_return)(state.policy))

    def iteration(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """One iteration of Algorithm 1, plus its metrics."""
        config = self.config
        rollout_key, critic_key, eval_key = self.iteration_keys(state)
        candidates, lengths, returns = self.collect(state, key=rollout_key)
        # Non-finite returns would poison every later critic fit: they never enter the buffer.
        finite = jnp.isfinite(returns)
        state = dataclasses.replace(state, buffer=state.buffer.insert(candidates, returns, finite))
        state, critic_loss, critic_skipped = self.critic_update(state, key=critic_key)
        state, policy_skipped = self.policy_update(state)
        evaluate = (state.iteration + 1) % config.eval_interval == 0
        eval_return = jax.lax.cond(
            evaluate, lambda: self.evaluate(state, key=eval_key), lambda: jnp.full((), jnp.nan)
        )
        metrics = {
            "episode_steps": jnp.sum(lengths),
            "return_mean": jnp.sum(jnp.where(finite, returns, 0.0)) / jnp.sum(finite),
            "return_max": jnp.max(jnp.where(finite, returns, -jnp.inf)),
            "eval_return": eval_return,
            "critic_loss": critic_loss,
            "policy_lr": policy_lr_at(config, state.iteration),
            "nonfinite_returns": jnp.sum(~finite),
            "skipped_updates": critic_skipped + policy_skipped,
        }
        # Replicated at the end of every iteration: the buffer and the update need all of this
        # iteration's rollouts on every device, and `run_chunk` returns the state as it took it.
        state = self._replicate(dataclasses.replace(state, iteration=state.iteration + 1))
        return state, metrics

    def run_chunk(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """`log_interval` iterations under `lax.scan`; metrics gain a leading iteration axis."""
        return jax.lax.scan(
            lambda s, _: self.iteration(s), state, None, length=self.config.log_interval
        )


def _device_mesh(config: EPVFConfig) -> Mesh:
    """The 1-D mesh (axis `"envs"`) over all devices that trains `config`.

    Raises a ValueError unless `num_envs` and `batch_size` are multiples of the device count,
    since each device takes an equal part of them.
    """
    devices = jax.devices()
    for name in ("num_envs", "batch_size"):
        value = getattr(config, name)
        if value % len(devices):
            raise ValueError(
                f"EPVFConfig.{name}={value} must be a multiple of the number of devices "
                f"({len(devices)}), which share it evenly; set {name} to a multiple of "
                f"{len(devices)} or limit the visible devices"
            )
    # Auto axes: the shardings are constraints on the computation, and the compiler places the
    # rest (the default of `jax.make_mesh`, explicit axes, would type every array by sharding).
    return Mesh(np.array(devices), (ENVS_AXIS,), axis_types=(AxisType.Auto,))


def make_train(config: EPVFConfig, env: Environment | None = None) -> EPVFTrainer:
    """The trainer for `config`, on `env` or else on `make_env(config.env, config.horizon)`.

    It trains on all devices (`EPVFTrainer.mesh`), so `num_envs` and `batch_size` must be
    multiples of the device count (else a ValueError); the environment's arrays are replicated.
    """
    mesh = _device_mesh(config)
    if env is None:
        env = make_env(config.env, config.horizon)
    # Arrays committed to one device (MJX puts its model on the default device) cannot enter a
    # computation across several.
    env_arrays, env_static = eqx.partition(env, eqx.is_array)
    env = eqx.combine(jax.device_put(env_arrays, NamedSharding(mesh, PartitionSpec())), env_static)

    def build(key):
        policy = make_policy(env, config.policy_hidden, key=key)
        return policy, make_critic(config.critic, policy, key=key, hidden=config.critic_hidden)

    # Only the structure is needed here; shapes alone avoid compiling the initialisers.
    policy, critic = eqx.filter_eval_shape(build, jax.random.key(0))

    def is_shape(x):
        return isinstance(x, jax.ShapeDtypeStruct)

    return EPVFTrainer(
        config=config,
        env=env,
        policy_static=eqx.filter(policy, is_shape, inverse=True),
        critic_static=eqx.filter(critic, is_shape, inverse=True),
        # Slots past the total number of rollouts would never be filled: not allocating them
        # keeps memory and checkpoints small without changing what is sampled.
        buffer_capacity=min(config.buffer_size, config.iterations * config.num_envs),
        mesh=mesh,
    )


def _parse_config(fields: dict) -> EPVFConfig:
    return EPVFConfig.from_dict(fields)


def load_checkpoint(path: Path, trainer: EPVFTrainer) -> tuple[TrainState, dict]:
    """The state and header of an EPVF checkpoint written for this trainer's config."""
    return _loop.load_checkpoint(
        Path(path), trainer, checkpoint_format=CHECKPOINT_FORMAT, parse_config=_parse_config
    )


def train(
    config: EPVFConfig,
    env: Environment | None = None,
    *,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[EPVFTrainer, TrainState]:
    """Run EPVF training and record it in `out_dir`.

    Writes `config.json`, `metrics.csv`, `checkpoint.eqx` (every `checkpoint_interval`
    iterations and at the end) and `returns.png`. `metrics.csv` has one row per iteration:
    `env_steps` (cumulative steps of the data-collection episodes, up to their ends),
    `wall_s` (since the start of the training loop, compilation included, spread evenly within
    a chunk), `return_mean`/`return_max` over the perturbed policies' finite returns,
    `eval_return` (the unperturbed policies after this iteration's updates, every
    `eval_interval` iterations, else NaN), the mean `critic_loss`, `policy_lr`,
    `nonfinite_returns` (left out of the buffer) and `skipped_updates` (non-finite gradients).

    With `resume=True` the run continues from `out_dir/checkpoint.eqx` and reproduces an
    uninterrupted run's metrics (all but `wall_s`). `env` replaces the config's environment (pass
    it again on resume). `on_chunk(iteration)` is called after each chunk's metrics are written.
    Returns the trainer and the final state (`trainer.policy(state)` is the trained policy).
    """
    trainer = make_train(config, env)
    state = _loop.run_training(
        trainer,
        out_dir=out_dir,
        checkpoint_format=CHECKPOINT_FORMAT,
        config_json=config.to_json(),
        parse_config=_parse_config,
        resume=resume,
        progress=progress,
        desc="EPVF",
        on_chunk=on_chunk,
    )
    return trainer, state
