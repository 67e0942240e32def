"""EPVF training (Algorithm 1) as a `Trainer`: perturb, roll out, fit the critic, ascend it."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int, Key, PRNGKeyArray, PyTree, UInt32

from nfn_rl.envs import (
    Ant,
    Environment,
    GymnasiumEnv,
    NativeAnt,
    episode_length_and_return,
    make_env,
    observation_statistics,
)
from nfn_rl.epvf._config import EPVFConfig
from nfn_rl.epvf._critics import critic_options, make_critic
from nfn_rl.epvf._perturb import perturb_population
from nfn_rl.epvf._policy import make_policy
from nfn_rl.run import (
    FIFOBuffer,
    Trainer,
    TrainState,
    make_buffer,
    return_statistics,
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

# The one mesh axis: the environments (perturbed policies) of an iteration and the critic batch
# are split along it; everything else is replicated on every device.
ENVS_AXIS = "envs"


class EPVFState(TrainState):
    """Everything that changes during EPVF training.

    `policy` holds the policy arrays with a leading axis over the trained policies (1, or
    `num_envs` with `multiple_policies`). `buffer` holds `(policy arrays, return)` pairs.
    """

    iteration: Int[Array, ""]
    key: UInt32[Array, "..."]
    policy: PyTree[Array]
    policy_opt_state: PyTree
    critic: PyTree[Array]
    critic_opt_state: PyTree
    buffer: FIFOBuffer


def policy_lr_at(config: EPVFConfig, iteration: Int[Array, ""] | int) -> Float[Array, ""]:
    """The policy learning rate used during `iteration` (exponential: `policy_lr` at the first
    iteration, `policy_lr_end` at the last)."""
    if config.policy_lr_schedule == "constant":
        return jnp.asarray(config.policy_lr, jnp.float32)
    fraction = jnp.asarray(iteration, jnp.float32) / max(config.iterations - 1, 1)
    return config.policy_lr * (config.policy_lr_end / config.policy_lr) ** fraction


def standardize(values: Float[Array, " n"], valid: Bool[Array, " n"]) -> Float[Array, " n"]:
    """`values` minus the mean of the valid ones, divided by their standard deviation; invalid
    entries are returned unchanged. Values that are equal up to float32 rounding (standard
    deviation below 1e-6 of their largest magnitude) standardise to 0, not to amplified rounding
    noise."""
    count = jnp.maximum(jnp.sum(valid), 1)
    mean = jnp.sum(jnp.where(valid, values, 0.0)) / count
    centred = jnp.where(valid, values - mean, 0.0)
    std = jnp.sqrt(jnp.sum(centred**2) / count)
    largest = jnp.max(jnp.where(valid, jnp.abs(values), 0.0))
    distinct = std > 1e-6 * largest
    return jnp.where(
        valid, jnp.where(distinct, centred / jnp.where(distinct, std, 1.0), 0.0), values
    )


def _policy_optimizer(config: EPVFConfig) -> optax.GradientTransformation:
    # The learning rate is a hyperparameter set from the iteration number before each iteration's
    # policy steps, so that skipped (non-finite) steps cannot shift the schedule.
    return skip_nonfinite(
        optax.inject_hyperparams(optax.adamw)(
            learning_rate=config.policy_lr, weight_decay=config.weight_decay
        )
    )


def _critic_optimizer(config: EPVFConfig) -> optax.GradientTransformation:
    return skip_nonfinite(optax.adam(config.critic_lr))


class EPVFTrainer(Trainer):
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

    def _split(self, tree: PyTree) -> PyTree:
        """`tree` with the leading axis of every array split across the devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec(ENVS_AXIS))
        return jax.lax.with_sharding_constraint(tree, sharding)

    def _replicate(self, tree: PyTree) -> PyTree:
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec()))

    def _clip_weights(self, policy: PyTree[Array]) -> PyTree[Array]:
        clip = self.config.weight_clip
        if clip is None:
            return policy
        return jax.tree.map(lambda x: jnp.clip(x, -clip, clip), policy)

    def init(self, key: PRNGKeyArray) -> EPVFState:
        config = self.config
        policy_key, critic_key, stats_key, run_key = jax.random.split(key, 4)
        policies = jax.vmap(
            lambda k: eqx.filter(
                make_policy(self.env, config.policy_width, config.policy_depth, key=k),
                eqx.is_array,
            )
        )(jax.random.split(policy_key, self.num_policies))
        # The first iteration perturbs the policy that the clip would have produced.
        policies = self._clip_weights(policies)
        example = eqx.combine(jax.tree.map(lambda x: x[0], policies), self.policy_static)
        critic = _make_critic(config, self.env, example, key=critic_key, stats_key=stats_key)
        critic = eqx.filter(critic, eqx.is_array)
        return EPVFState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            policy=policies,
            policy_opt_state=_policy_optimizer(config).init(policies),
            critic=critic,
            critic_opt_state=_critic_optimizer(config).init(critic),
            buffer=make_buffer(
                (jax.tree.map(lambda x: x[0], policies), jnp.zeros(())), self.buffer_capacity
            ),
        )

    def policy(self, state: EPVFState, index: Int[Array, ""] | int = 0) -> eqx.nn.MLP:
        return eqx.combine(jax.tree.map(lambda x: x[index], state.policy), self.policy_static)

    def _returns(
        self, params: PyTree[Array], keys: Key[Array, " n"]
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
        if isinstance(self.env, NativeAnt | GymnasiumEnv):
            return self._returns_on_each_device(params, keys)
        return self._episodes(self.env, params, keys)

    def _episodes(
        self, env: Environment, params: PyTree[Array], keys: Key[Array, " n"]
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
        return jax.vmap(
            lambda p, k: episode_length_and_return(env, eqx.combine(p, self.policy_static), k)
        )(params, keys)

    def _returns_on_each_device(
        self, params: PyTree[Array], keys: Key[Array, " n"]
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]]:
        """`_episodes`, with each device's share of the episodes played by its own host call.

        The native Ant runs on the host through a callback, which the compiler would otherwise
        place on the first device alone, gathering every episode there: across processes, each
        process now plays its own devices' episodes on its own CPU.
        """
        env_arrays, env_static = eqx.partition(self.env, eqx.is_array)

        def on_device(env_arrays, params, keys):
            return self._episodes(eqx.combine(env_arrays, env_static), params, keys)

        split = PartitionSpec(ENVS_AXIS)
        return jax.shard_map(
            on_device,
            mesh=self.mesh,
            in_specs=(PartitionSpec(), split, split),
            out_specs=(split, split),
        )(env_arrays, params, keys)

    def collect(
        self, state: EPVFState, *, key: PRNGKeyArray
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
            weight_clip=config.perturbed_weight_clip,
        )
        candidates = self._split(candidates)
        keys = self._split(jax.random.split(rollout_key, config.num_envs))
        lengths, returns = self._split(self._returns(candidates, keys))
        return candidates, lengths, returns

    def _value(self, critic: PyTree[Array], params: PyTree[Array]) -> Float[Array, " n"]:
        critic = eqx.combine(critic, self.critic_static)
        return jax.vmap(lambda p: critic(eqx.combine(p, self.policy_static)))(params)

    def critic_update(
        self, state: EPVFState, *, key: PRNGKeyArray
    ) -> tuple[EPVFState, Float[Array, ""]]:
        """`critic_steps` Adam steps on batches from the buffer; returns the new state and the
        mean loss over the finite steps (NaN if none was, or the buffer is empty)."""
        optimizer = _critic_optimizer(self.config)

        def loss_fn(critic, params, returns, valid):
            if self.config.standardize_returns:
                returns = standardize(returns, valid)
            error = jnp.where(valid, self._value(critic, params) - returns, 0.0)
            return jnp.sum(error**2) / jnp.maximum(jnp.sum(valid), 1)

        def step(carry, step_key):
            critic, opt_state = carry
            # The gradient is a sum over the batch: each device takes its part of the batch, and
            # the partial gradients are summed across devices.
            (params, returns), valid = self._split(
                state.buffer.sample(self.config.batch_size, key=step_key)
            )
            loss, grads = jax.value_and_grad(loss_fn)(critic, params, returns, valid)
            updates, opt_state = optimizer.update(grads, opt_state, critic)
            # An empty buffer fits nothing: its loss is NaN, not 0.
            loss = jnp.where(jnp.any(valid), loss, jnp.nan)
            return (optax.apply_updates(critic, updates), opt_state), loss

        keys = jax.random.split(key, self.config.critic_steps)
        (critic, opt_state), losses = jax.lax.scan(
            step, (state.critic, state.critic_opt_state), keys
        )
        finite = jnp.isfinite(losses)
        mean_loss = jnp.sum(jnp.where(finite, losses, 0.0)) / jnp.sum(finite)
        return dataclasses.replace(state, critic=critic, critic_opt_state=opt_state), mean_loss

    def policy_update(self, state: EPVFState) -> EPVFState:
        """`policy_steps` steps ascending the (frozen) critic, then weight clipping."""
        optimizer = _policy_optimizer(self.config)
        opt_state = state.policy_opt_state
        inner = opt_state.inner_state
        hyperparams = inner.hyperparams | {
            "learning_rate": policy_lr_at(self.config, state.iteration)
        }
        opt_state = opt_state._replace(inner_state=inner._replace(hyperparams=hyperparams))

        def loss_fn(policy):
            # A sum, not a mean: each trained policy ascends its own value.
            return -jnp.sum(self._value(state.critic, policy))

        def step(carry, _):
            policy, opt_state = carry
            grads = jax.grad(loss_fn)(policy)
            updates, opt_state = optimizer.update(grads, opt_state, policy)
            return (optax.apply_updates(policy, updates), opt_state), None

        (policy, opt_state), _ = jax.lax.scan(
            step, (state.policy, opt_state), None, length=self.config.policy_steps
        )
        policy = self._clip_weights(policy)
        return dataclasses.replace(state, policy=policy, policy_opt_state=opt_state)

    def update(self, state: EPVFState, key: PRNGKeyArray) -> tuple[EPVFState, dict[str, Array]]:
        rollout_key, critic_key = jax.random.split(key)
        skipped_before = skipped_steps(state.critic_opt_state) + skipped_steps(
            state.policy_opt_state
        )
        candidates, lengths, returns = self.collect(state, key=rollout_key)
        # Non-finite returns would poison every later critic fit: they never enter the buffer.
        finite = jnp.isfinite(returns)
        buffer = state.buffer.insert((candidates, returns), finite)
        state = dataclasses.replace(state, buffer=buffer)
        state, critic_loss = self.critic_update(state, key=critic_key)
        state = self.policy_update(state)
        skipped = (
            skipped_steps(state.critic_opt_state)
            + skipped_steps(state.policy_opt_state)
            - skipped_before
        )
        metrics = return_statistics(returns, jnp.ones_like(finite)) | {
            "episode_steps": jnp.sum(lengths),
            "critic_loss": critic_loss,
            "policy_lr": policy_lr_at(self.config, state.iteration),
            "skipped_updates": skipped,
        }
        # Replicated at the end of every iteration: the buffer and the update need all of this
        # iteration's rollouts on every device.
        return self._replicate(state), metrics


def _device_mesh(config: EPVFConfig) -> Mesh:
    """The 1-D mesh (axis `"envs"`) over all devices that trains `config`.

    Raises a ValueError unless `num_envs` and `batch_size` are multiples of the device count,
    since each device takes an equal part of them.
    """
    devices = jax.devices()
    # Across processes the devices are every process's: each process takes its devices' part.
    processes = jax.process_count()
    across = f" over {processes} processes" if processes > 1 else ""
    for name in ("num_envs", "batch_size"):
        value = getattr(config, name)
        if value % len(devices):
            raise ValueError(
                f"EPVFConfig.{name}={value} must be a multiple of the number of devices "
                f"({len(devices)}){across}, which share it evenly; set {name} to a multiple of "
                f"{len(devices)} or use fewer devices or processes"
            )
    # Auto axes: the shardings are constraints on the computation, and the compiler places the
    # rest (the default of `jax.make_mesh`, explicit axes, would type every array by sharding).
    return Mesh(np.array(devices), (ENVS_AXIS,), axis_types=(AxisType.Auto,))


def make_epvf(config: EPVFConfig, env: Environment | None = None) -> EPVFTrainer:
    """The EPVF trainer for `config`, on `env` or else on `make_env(config.env, config.horizon)`.

    It trains on all devices (`EPVFTrainer.mesh`), so `num_envs` and `batch_size` must be
    multiples of the device count (else a ValueError); the environment's arrays are replicated.
    """
    if not isinstance(config, EPVFConfig):
        raise TypeError(f"make_epvf needs an EPVFConfig, got {type(config).__name__}")
    mesh = _device_mesh(config)
    if env is None:
        env = make_env(config.env, config.horizon)
    env = _with_backend(config, env)
    # Arrays committed to one device (MJX puts its model on the default device) cannot enter a
    # computation across several; they go through the host, where every process has them.
    env_arrays, env_static = eqx.partition(env, eqx.is_array)
    env_arrays = jax.tree.map(np.asarray, env_arrays)
    env = eqx.combine(jax.device_put(env_arrays, NamedSharding(mesh, PartitionSpec())), env_static)

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


def _with_backend(config: EPVFConfig, env: Environment) -> Environment:
    """`env`, as a `NativeAnt` where `config.backend` asks for MuJoCo's C engine.

    A `GymnasiumEnv` chose its backend itself (native where it has one).
    """
    backend = config.backend
    if isinstance(env, GymnasiumEnv):
        return env
    if backend == "auto":
        # One CPU device per process (in a multi-process run, each process plays its share).
        one_cpu = jax.default_backend() == "cpu" and len(jax.local_devices()) == 1
        backend = "native" if one_cpu and isinstance(env, Ant) else "mjx"
    if backend == "mjx" or isinstance(env, NativeAnt):
        return env
    if not isinstance(env, Ant):
        raise ValueError(
            f"EPVFConfig.backend: 'native' simulates the Ant only, got {type(env).__name__}"
        )
    return NativeAnt(env.variant, env.horizon)


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
    critic's structure)."""
    accepted = critic_options(config.critic)
    options = {name: getattr(config, name) for name in CRITIC_OPTION_FIELDS if name in accepted}
    if "observation_stats" in accepted:
        if key is None:
            zeros = jnp.zeros(env.observation_size)
            options["observation_stats"] = (zeros, zeros)
        else:
            options["observation_stats"] = observation_statistics(env, key=key)
    return options
