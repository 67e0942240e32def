"""What EPVF and the ES baseline share: one policy perturbed into a population each iteration,
rolled out on every device, and moved by a scheduled optimiser under a weight clip."""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray, PyTree

from nfn_rl.envs import (
    Ant,
    Environment,
    EpisodeSummary,
    GymnasiumEnv,
    NativeAnt,
    episode_length_and_return,
    episode_summary,
    make_env,
)
from nfn_rl.population._config import PerturbationConfig
from nfn_rl.population._normalize import ObservationNormalizer, fold_observations
from nfn_rl.population._perturb import perturb_population
from nfn_rl.population._policy import make_policy
from nfn_rl.run import Trainer, return_statistics, skip_nonfinite

# The one mesh axis: the environments (perturbed policies) of an iteration and the critic batch
# are split along it; everything else is replicated on every device.
ENVS_AXIS = "envs"


def policy_lr_at(config: PerturbationConfig, iteration: Int[Array, ""] | int) -> Float[Array, ""]:
    """The policy learning rate used during `iteration` (exponential: `policy_lr` at the first
    iteration, `policy_lr_end` at the last)."""
    if config.policy_lr_schedule == "constant":
        return jnp.asarray(config.policy_lr, jnp.float32)
    fraction = jnp.asarray(iteration, jnp.float32) / max(config.iterations - 1, 1)
    return config.policy_lr * (config.policy_lr_end / config.policy_lr) ** fraction


def policy_optimizer(config: PerturbationConfig) -> optax.GradientTransformation:
    """AdamW whose learning rate `with_policy_lr` sets before each iteration's policy steps, so
    that skipped (non-finite) steps cannot shift the schedule."""
    return skip_nonfinite(
        optax.inject_hyperparams(optax.adamw)(
            learning_rate=config.policy_lr, weight_decay=config.weight_decay
        )
    )


def with_policy_lr(
    config: PerturbationConfig, opt_state: PyTree, iteration: Int[Array, ""]
) -> PyTree:
    """`policy_optimizer`'s state with the learning rate of `iteration`."""
    inner = opt_state.inner_state
    hyperparams = inner.hyperparams | {"learning_rate": policy_lr_at(config, iteration)}
    return opt_state._replace(inner_state=inner._replace(hyperparams=hyperparams))


class Population(eqx.Module):
    """One iteration's rollouts (`PopulationTrainer.collect`): the perturbed parameters
    (leading axis `num_envs`, before any observation normalisation is folded in), each one's
    episode length and return, and the observation normaliser with these episodes'
    observations merged in (None without normalisation)."""

    params: PyTree[Array]
    lengths: Int[Array, " envs"]
    returns: Float[Array, " envs"]
    observations: ObservationNormalizer | None


class PopulationTrainer(Trainer):
    """A trainer that perturbs its policy into `num_envs` policies per iteration and rolls each
    out once (EPVF, ES). `mesh` is a 1-D mesh over all devices (axis `"envs"`), of every
    process in a multi-process run: the rollouts are split evenly across it.

    Concrete subclasses hold `policy_static` (the policy's non-array part), keep the policy
    arrays in `state.policy` and the observation normaliser (`initial_observations`) in
    `state.observations`, and implement `init` and `update` with the methods here. The policy
    arrays are what the critic reads and the optimiser moves; the policies that act (in the
    rollouts, the evaluation and `policy`) have the normaliser folded in.
    """

    config: eqx.AbstractVar[PerturbationConfig]
    policy_static: eqx.AbstractVar[PyTree]

    def split(self, tree: PyTree) -> PyTree:
        """`tree` with the leading axis of every array split across the devices."""
        sharding = NamedSharding(self.mesh, PartitionSpec(ENVS_AXIS))
        return jax.lax.with_sharding_constraint(tree, sharding)

    def replicate(self, tree: PyTree) -> PyTree:
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec()))

    def clip_weights(self, policy: PyTree[Array]) -> PyTree[Array]:
        clip = self.config.weight_clip
        if clip is None:
            return policy
        return jax.tree.map(lambda x: jnp.clip(x, -clip, clip), policy)

    def initial_policy_state(self, key: PRNGKeyArray) -> tuple[PyTree[Array], PyTree]:
        """`num_policies` initial policies' arrays, stacked, as the weight clip leaves them (the
        first iteration perturbs the policy that the clip would have produced), and the state
        of `policy_optimizer` for them."""
        config = self.config
        policies = jax.vmap(
            lambda k: eqx.filter(
                make_policy(self.env, config.policy_width, config.policy_depth, key=k),
                eqx.is_array,
            )
        )(jax.random.split(key, self.num_policies))
        policies = self.clip_weights(policies)
        return policies, policy_optimizer(config).init(policies)

    def policy_steps(
        self,
        policy: PyTree[Array],
        opt_state: PyTree,
        iteration: Int[Array, ""],
        gradient: Callable[[PyTree[Array]], PyTree[Array]],
        steps: int,
    ) -> tuple[PyTree[Array], PyTree]:
        """`steps` steps of `policy_optimizer` at the learning rate of `iteration`, each along
        `gradient(policy)` (the gradient of a loss: the optimiser descends it), then the weight
        clip; returns the new policy arrays and optimiser state."""
        optimizer = policy_optimizer(self.config)

        def step(carry, _):
            policy, opt_state = carry
            updates, opt_state = optimizer.update(gradient(policy), opt_state, policy)
            return (optax.apply_updates(policy, updates), opt_state), None

        opt_state = with_policy_lr(self.config, opt_state, iteration)
        (policy, opt_state), _ = jax.lax.scan(step, (policy, opt_state), None, length=steps)
        return self.clip_weights(policy), opt_state

    def initial_observations(self) -> ObservationNormalizer | None:
        """The observation normaliser before any rollout (None unless
        `observation_normalization`)."""
        if not self.config.observation_normalization:
            return None
        return ObservationNormalizer.empty(self.env.observation_size)

    def policy(self, state, index: Int[Array, ""] | int = 0) -> eqx.nn.MLP:
        """Trained policy `index`, acting on raw observations (normalisation folded in)."""
        params = jax.tree.map(lambda x: x[index], state.policy)
        return eqx.combine(fold_observations(state.observations, params), self.policy_static)

    def iteration_metrics(
        self,
        population: Population,
        iteration: Int[Array, ""],
        *,
        critic_loss: Float[Array, ""],
        skipped_updates: Int[Array, ""],
    ) -> dict[str, Array]:
        """What every population trainer reports of an iteration: the statistics of its
        population's returns (every episode counted), their environment steps, the critic's
        loss (NaN without a critic), the policy learning rate and the skipped updates."""
        return return_statistics(population.returns, jnp.ones_like(population.returns, bool)) | {
            "episode_steps": jnp.sum(population.lengths),
            "critic_loss": critic_loss,
            "policy_lr": policy_lr_at(self.config, iteration),
            "skipped_updates": skipped_updates,
        }

    def learning_returns(self, population: Population) -> Float[Array, " envs"]:
        """The returns the method learns from: the population's, less `reward_shift` per step
        (`PerturbationConfig.reward_shift`; 0 leaves them exactly as they are)."""
        return population.returns - self.config.reward_shift * population.lengths

    def value_of(self, value: eqx.Module, params: PyTree[Array]) -> Float[Array, " n"]:
        """`value(policy)` of each stacked policy in `params`."""
        return jax.vmap(lambda p: value(eqx.combine(p, self.policy_static)))(params)

    def collect(
        self,
        policies: PyTree[Array],
        *,
        key: PRNGKeyArray,
        observations: ObservationNormalizer | None = None,
        multiple_policies: bool = False,
    ) -> Population:
        """Perturb the policy (each of `policies` with `multiple_policies`), roll every
        perturbation out once, acting on observations normalised by `observations` (frozen for
        the whole batch), and merge the batch's observations into it."""
        config = self.config
        perturb_key, rollout_key = jax.random.split(key)
        centre = policies if multiple_policies else jax.tree.map(lambda x: x[0], policies)
        candidates = perturb_population(
            centre,
            config.num_envs,
            key=perturb_key,
            multiple_policies=multiple_policies,
            noise=config.noise,
            scale=config.noise_scale,
            weight_clip=config.perturbed_weight_clip,
            antithetic=config.antithetic,
        )
        candidates = self.split(candidates)
        keys = self.split(jax.random.split(rollout_key, config.num_envs))
        acting = fold_observations(observations, candidates)
        if observations is None:
            lengths, returns = self.split(self._returns(acting, keys, summaries=False))
            return Population(candidates, lengths, returns, None)
        summaries = self.split(self._returns(acting, keys, summaries=True))
        observations = observations.update(summaries, jnp.isfinite(summaries.total))
        return Population(candidates, summaries.length, summaries.total, observations)

    def neighbourhood_return(
        self, state, *, key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """The mean return of `num_envs` perturbations of the trained policy (the training
        noise, one episode each) and its standard error: a measure of the final policy that a
        single deterministic episode's luck does not decide, comparable across methods that
        share the population."""
        returns = self.collect(state.policy, key=key, observations=state.observations).returns
        finite = jnp.isfinite(returns)
        count = jnp.maximum(jnp.sum(finite), 1)
        mean = jnp.sum(jnp.where(finite, returns, 0.0)) / count
        variance = jnp.sum(jnp.where(finite, (returns - mean) ** 2, 0.0)) / jnp.maximum(
            count - 1, 1
        )
        return mean, jnp.sqrt(variance / count)

    def _returns(
        self, params: PyTree[Array], keys: Key[Array, " n"], *, summaries: bool
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]] | EpisodeSummary:
        if isinstance(self.env, NativeAnt | GymnasiumEnv):
            return self._returns_on_each_device(params, keys, summaries)
        return self._episodes(self.env, params, keys, summaries)

    def _episodes(
        self, env: Environment, params: PyTree[Array], keys: Key[Array, " n"], summaries: bool
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]] | EpisodeSummary:
        episode = episode_summary if summaries else episode_length_and_return
        return jax.vmap(lambda p, k: episode(env, eqx.combine(p, self.policy_static), k))(
            params, keys
        )

    def _returns_on_each_device(
        self, params: PyTree[Array], keys: Key[Array, " n"], summaries: bool
    ) -> tuple[Int[Array, " n"], Float[Array, " n"]] | EpisodeSummary:
        """`_episodes`, with each device's share of the episodes played by its own host call.

        The native Ant runs on the host through a callback, which the compiler would otherwise
        place on the first device alone, gathering every episode there: across processes, each
        process now plays its own devices' episodes on its own CPU.
        """
        env_arrays, env_static = eqx.partition(self.env, eqx.is_array)

        def on_device(env_arrays, params, keys):
            return self._episodes(eqx.combine(env_arrays, env_static), params, keys, summaries)

        split = PartitionSpec(ENVS_AXIS)
        return jax.shard_map(
            on_device,
            mesh=self.mesh,
            in_specs=(PartitionSpec(), split, split),
            out_specs=split,
        )(env_arrays, params, keys)


def device_mesh(config: PerturbationConfig, divided: tuple[str, ...] = ("num_envs",)) -> Mesh:
    """The 1-D mesh (axis `"envs"`) over all devices that trains `config`.

    Raises a ValueError unless each field in `divided` is a multiple of the device count, since
    each device takes an equal part of them.
    """
    devices = jax.devices()
    # Across processes the devices are every process's: each process takes its devices' part.
    processes = jax.process_count()
    across = f" over {processes} processes" if processes > 1 else ""
    owner = type(config).__name__
    for name in divided:
        value = getattr(config, name)
        if value % len(devices):
            raise ValueError(
                f"{owner}.{name}={value} must be a multiple of the number of devices "
                f"({len(devices)}){across}, which share it evenly; set {name} to a multiple of "
                f"{len(devices)} or use fewer devices or processes"
            )
    # Auto axes: the shardings are constraints on the computation, and the compiler places the
    # rest (the default of `jax.make_mesh`, explicit axes, would type every array by sharding).
    return Mesh(np.array(devices), (ENVS_AXIS,), axis_types=(AxisType.Auto,))


def population_env(config: PerturbationConfig, env: Environment | None, mesh: Mesh) -> Environment:
    """`env` (or `make_env(config.env, config.horizon)`) on `config.backend`, its arrays
    replicated over `mesh`."""
    if env is None:
        env = make_env(config.env, config.horizon)
    env = _with_backend(config, env)
    # Arrays committed to one device (MJX puts its model on the default device) cannot enter a
    # computation across several; they go through the host, where every process has them.
    env_arrays, env_static = eqx.partition(env, eqx.is_array)
    env_arrays = jax.tree.map(np.asarray, env_arrays)
    return eqx.combine(jax.device_put(env_arrays, NamedSharding(mesh, PartitionSpec())), env_static)


def population_setup(
    config: PerturbationConfig, env: Environment | None, divided: tuple[str, ...] = ("num_envs",)
) -> tuple[PerturbationConfig, Environment, Mesh]:
    """What a population trainer of `config` runs on: `config` naming the simulator it uses
    (`with_resolved_backend`), the `population_env` and the `device_mesh` (over which the
    fields in `divided` are split) that it is placed on."""
    mesh = device_mesh(config, divided)
    env = population_env(config, env, mesh)
    return with_resolved_backend(config, env), env, mesh


def with_resolved_backend(config: PerturbationConfig, env: Environment) -> PerturbationConfig:
    """`config` naming the simulator `env` uses on an Ant (`backend` "native" or "mjx", never
    "auto", which another machine may resolve otherwise), so that `config.json` and the
    checkpoints record it and a resume on the other one is refused by name."""
    if not isinstance(env, Ant):
        return config
    return dataclasses.replace(config, backend="native" if isinstance(env, NativeAnt) else "mjx")


def _with_backend(config: PerturbationConfig, env: Environment) -> Environment:
    """`env`, as a `NativeAnt` where `config.backend` asks for MuJoCo's C engine.

    A `GymnasiumEnv` chose its backend itself (native where it has one).
    """
    if isinstance(env, GymnasiumEnv):
        return env
    backend = config.backend
    if backend == "auto":
        # One CPU device per process (in a multi-process run, each process plays its share).
        one_cpu = jax.default_backend() == "cpu" and len(jax.local_devices()) == 1
        backend = "native" if one_cpu and isinstance(env, Ant) else "mjx"
    if backend == "mjx" or isinstance(env, NativeAnt):
        return env
    if not isinstance(env, Ant):
        raise ValueError(
            f"{type(config).__name__}.backend: 'native' simulates the Ant only, "
            f"got {type(env).__name__}"
        )
    return NativeAnt(env.variant, env.horizon)
