"""SAC on our environment protocol: twin Q networks, Polyak targets, learned temperature."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl.baselines._config import SACConfig
from nfn_rl.baselines._envs import EnvBatch, Transition, reset_batch, step_batch
from nfn_rl.baselines._losses import actor_loss, q_loss, soft_q_target, temperature_loss
from nfn_rl.baselines._networks import DeterministicPolicy, Normalizer, TanhGaussian, mlp
from nfn_rl.envs import Environment
from nfn_rl.run import (
    FIFOBuffer,
    Trainer,
    TrainState,
    default_device_mesh,
    make_buffer,
    return_statistics,
    skip_nonfinite,
    skipped_steps,
    static_part,
)

_NUM_Q = 2


class Transitions(eqx.Module):
    """What SAC stores of each step (one step, or a batch with a leading axis on every field)."""

    obs: Float[Array, "*n obs"]
    action: Float[Array, "*n action"]
    reward: Float[Array, "*n"]
    next_obs: Float[Array, "*n obs"]
    terminated: Bool[Array, "*n"]


class SACState(TrainState):
    iteration: Int[Array, ""]
    key: UInt32[Array, "..."]
    actor: PyTree[Array]
    critics: PyTree[Array]
    """The arrays of `_NUM_Q` Q networks, stacked on a leading axis."""
    target_critics: PyTree[Array]
    log_alpha: Float[Array, ""]
    actor_opt_state: PyTree
    critic_opt_state: PyTree
    alpha_opt_state: PyTree
    replay: FIFOBuffer
    """`Transitions`."""
    normalizer: Normalizer
    envs: EnvBatch


def _build_actor(config: SACConfig, env: Environment, key: PRNGKeyArray) -> eqx.nn.MLP:
    size = env.observation_size
    return mlp(size, 2 * env.action_size, config.policy_width, config.policy_depth, key=key)


def _build_critic(config: SACConfig, env: Environment, key: PRNGKeyArray) -> eqx.nn.MLP:
    size = env.observation_size + env.action_size
    return mlp(size, "scalar", config.value_width, config.value_depth, key=key)


def _optimizer(config: SACConfig) -> optax.GradientTransformation:
    return skip_nonfinite(optax.adam(config.learning_rate))


class SACTrainer(Trainer):
    """SAC for one config and continuous-action environment; build with `nfn_rl.make_trainer`."""

    config: SACConfig = eqx.field(static=True)
    env: Environment
    mesh: Mesh = eqx.field(static=True)
    actor_static: PyTree
    critic_static: PyTree
    replay_capacity: int = eqx.field(static=True)
    num_policies: int = eqx.field(static=True, default=1)

    def init(self, key: PRNGKeyArray) -> SACState:
        config, env = self.config, self.env
        actor_key, critic_key, env_key, run_key = jax.random.split(key, 4)
        actor = eqx.filter(_build_actor(config, env, actor_key), eqx.is_array)
        critics = jax.vmap(lambda k: eqx.filter(_build_critic(config, env, k), eqx.is_array))(
            jax.random.split(critic_key, _NUM_Q)
        )
        log_alpha = jnp.log(jnp.asarray(config.init_alpha, jnp.float32))
        optimizer = _optimizer(config)
        example = Transitions(
            obs=jnp.zeros(env.observation_size),
            action=jnp.zeros(env.action_size),
            reward=jnp.zeros(()),
            next_obs=jnp.zeros(env.observation_size),
            terminated=jnp.zeros((), bool),
        )
        return SACState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            actor=actor,
            critics=critics,
            target_critics=critics,
            log_alpha=log_alpha,
            actor_opt_state=optimizer.init(actor),
            critic_opt_state=optimizer.init(critics),
            alpha_opt_state=optimizer.init(log_alpha),
            replay=make_buffer(example, self.replay_capacity),
            normalizer=Normalizer.init(env.observation_size, enabled=config.normalize_observations),
            envs=reset_batch(env, config.num_envs, key=env_key),
        )

    def policy(self, state: SACState, index: Int[Array, ""] | int = 0) -> DeterministicPolicy:
        actor = eqx.combine(state.actor, self.actor_static)
        return DeterministicPolicy(actor, state.normalizer, discrete=False)

    def _q_values(self, critics: PyTree[Array], obs, action) -> Float[Array, "num_q n"]:
        """Every Q network on a batch of (normalised observation, action) pairs."""
        inputs = jnp.concatenate([obs, action], axis=-1)

        def one(params):
            return jax.vmap(eqx.combine(params, self.critic_static))(inputs)

        return jax.vmap(one)(critics)

    def _sample_actions(self, actor: PyTree[Array], obs, key: PRNGKeyArray):
        """Actions in (-1, 1) and their log-probabilities for a batch of normalised obs."""
        net = eqx.combine(actor, self.actor_static)
        dists = jax.vmap(lambda o: TanhGaussian.from_output(net(o)))(obs)
        samples = jax.vmap(lambda d, k: d.sample(key=k))(dists, jax.random.split(key, len(obs)))
        log_probs = jax.vmap(lambda d, s: d.log_prob(s))(dists, samples)
        return jnp.tanh(samples), log_probs

    def _rollout(self, state: SACState, key: PRNGKeyArray) -> tuple[EnvBatch, Transition, Array]:
        def step(envs, step_key):
            act_key, env_key = jax.random.split(step_key)
            obs = jax.vmap(state.normalizer)(envs.state.obs)
            actions, _ = self._sample_actions(state.actor, obs, act_key)
            envs, transition = step_batch(self.env, envs, actions, key=env_key)
            return envs, (transition, actions)

        keys = jax.random.split(key, self.config.unroll_length)
        envs, (transitions, actions) = jax.lax.scan(step, state.envs, keys)
        return envs, transitions, actions

    def _gradient_step(self, state: SACState, key: PRNGKeyArray) -> tuple[SACState, Array]:
        """One step of the twin Q networks, the actor and the temperature; returns the new state
        and the Q loss."""
        config = self.config
        optimizer = _optimizer(config)
        batch_key, next_key, actor_key = jax.random.split(key, 3)
        batch = state.replay.sample_with_replacement(config.batch_size, key=batch_key)
        obs = jax.vmap(state.normalizer)(batch.obs)
        next_obs = jax.vmap(state.normalizer)(batch.next_obs)
        alpha = jnp.exp(state.log_alpha)

        next_actions, next_log_probs = self._sample_actions(state.actor, next_obs, next_key)
        target = soft_q_target(
            batch.reward,
            batch.terminated,
            self._q_values(state.target_critics, next_obs, next_actions),
            next_log_probs,
            alpha,
            discount=config.discount,
            reward_scale=config.reward_scale,
        )

        def critic_objective(critics):
            return q_loss(self._q_values(critics, obs, batch.action), target)

        def actor_objective(actor):
            actions, log_probs = self._sample_actions(actor, obs, actor_key)
            q = self._q_values(state.critics, obs, actions)
            return actor_loss(q, log_probs, alpha), log_probs

        target_entropy = -float(self.env.action_size)
        loss, critic_grads = jax.value_and_grad(critic_objective)(state.critics)
        actor_grads, log_probs = jax.grad(actor_objective, has_aux=True)(state.actor)
        alpha_grad = jax.grad(temperature_loss)(state.log_alpha, log_probs, target_entropy)

        critic_updates, critic_opt = optimizer.update(critic_grads, state.critic_opt_state)
        actor_updates, actor_opt = optimizer.update(actor_grads, state.actor_opt_state)
        alpha_update, alpha_opt = optimizer.update(alpha_grad, state.alpha_opt_state)
        critics = optax.apply_updates(state.critics, critic_updates)
        state = dataclasses.replace(
            state,
            actor=optax.apply_updates(state.actor, actor_updates),
            critics=critics,
            target_critics=optax.incremental_update(critics, state.target_critics, config.tau),
            log_alpha=optax.apply_updates(state.log_alpha, alpha_update),
            actor_opt_state=actor_opt,
            critic_opt_state=critic_opt,
            alpha_opt_state=alpha_opt,
        )
        return state, loss

    def _skipped(self, state: SACState) -> Int[Array, ""]:
        return sum(
            skipped_steps(s)
            for s in (state.actor_opt_state, state.critic_opt_state, state.alpha_opt_state)
        )

    def update(self, state: SACState, key: PRNGKeyArray) -> tuple[SACState, dict[str, Array]]:
        config = self.config
        rollout_key, learn_key = jax.random.split(key)
        envs, transitions, actions = self._rollout(state, rollout_key)
        n = config.steps_per_iteration
        replay = state.replay.insert(
            Transitions(
                obs=transitions.obs.reshape(n, -1),
                action=actions.reshape(n, -1),
                reward=transitions.reward.reshape(n),
                next_obs=transitions.next_obs.reshape(n, -1),
                terminated=transitions.terminated.reshape(n),
            )
        )
        normalizer = state.normalizer.update(transitions.obs.reshape(n, -1))
        state = dataclasses.replace(state, envs=envs, replay=replay, normalizer=normalizer)
        skipped_before = self._skipped(state)

        def learn(state):
            keys = jax.random.split(learn_key, config.grad_updates)
            state, losses = jax.lax.scan(lambda s, k: self._gradient_step(s, k), state, keys)
            return state, jnp.mean(losses)

        def wait(state):
            return state, jnp.full((), jnp.nan)

        ready = replay.size >= max(config.min_replay, 1)
        state, loss = jax.lax.cond(ready, learn, wait, state)
        metrics = return_statistics(transitions.finished_return, transitions.done) | {
            "episode_steps": jnp.asarray(n),
            "critic_loss": loss,
            "policy_lr": jnp.asarray(config.learning_rate),
            "skipped_updates": self._skipped(state) - skipped_before,
        }
        return state, metrics


def make_sac(config: SACConfig, env: Environment) -> SACTrainer:
    """The SAC trainer for `config` on a continuous-action `env`."""
    if not isinstance(config, SACConfig):
        raise TypeError(f"make_sac needs a SACConfig, got {type(config).__name__}")
    if env.discrete:
        raise ValueError(
            f"SAC needs continuous actions, but {type(env).__name__} is discrete; "
            "use PPO (PPOConfig) for it"
        )
    capacity = min(config.replay_size, config.iterations * config.steps_per_iteration)
    if config.steps_per_iteration > capacity:
        raise ValueError(
            f"SACConfig.replay_size: must hold one iteration's {config.steps_per_iteration} "
            f"transitions (num_envs * unroll_length), got {config.replay_size}"
        )
    return SACTrainer(
        config=config,
        env=env,
        mesh=default_device_mesh("SAC"),
        actor_static=static_part(lambda key: _build_actor(config, env, key)),
        critic_static=static_part(lambda key: _build_critic(config, env, key)),
        replay_capacity=capacity,
    )
