"""SAC on our environment protocol: twin Q networks, Polyak targets, learned temperature."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl._guards import all_finite, select
from nfn_rl.baselines._common import (
    BaselineState,
    BaselineTrainer,
    episode_metrics,
    static_part,
)
from nfn_rl.baselines._config import SACConfig
from nfn_rl.baselines._envs import EnvBatch, Transition, reset_batch, step_batch
from nfn_rl.baselines._networks import DeterministicPolicy, Normalizer, TanhGaussian, mlp
from nfn_rl.envs import Environment

_NUM_Q = 2


class Replay(eqx.Module):
    """A FIFO buffer of transitions; slots `[0, size)` are filled."""

    obs: Float[Array, "capacity obs"]
    action: Float[Array, "capacity action"]
    reward: Float[Array, " capacity"]
    next_obs: Float[Array, "capacity obs"]
    terminated: Bool[Array, " capacity"]
    position: Int[Array, ""]
    size: Int[Array, ""]

    @classmethod
    def empty(cls, capacity: int, obs_size: int, action_size: int) -> "Replay":
        return cls(
            obs=jnp.zeros((capacity, obs_size)),
            action=jnp.zeros((capacity, action_size)),
            reward=jnp.zeros(capacity),
            next_obs=jnp.zeros((capacity, obs_size)),
            terminated=jnp.zeros(capacity, bool),
            position=jnp.zeros((), jnp.int32),
            size=jnp.zeros((), jnp.int32),
        )

    def insert(self, obs, action, reward, next_obs, terminated) -> "Replay":
        """Append a batch that is no larger than the capacity."""
        capacity = self.reward.shape[0]
        count = reward.shape[0]
        slots = (self.position + jnp.arange(count)) % capacity

        def put(store, new):
            return store.at[slots].set(new)

        return Replay(
            obs=put(self.obs, obs),
            action=put(self.action, action),
            reward=put(self.reward, reward),
            next_obs=put(self.next_obs, next_obs),
            terminated=put(self.terminated, terminated),
            position=(self.position + count) % capacity,
            size=jnp.minimum(self.size + count, capacity),
        )

    def sample(self, num: int, *, key: PRNGKeyArray) -> "Replay":
        """`num` transitions drawn uniformly with replacement (position and size dropped)."""
        index = jax.random.randint(key, (num,), 0, jnp.maximum(self.size, 1))
        fields = (self.obs, self.action, self.reward, self.next_obs, self.terminated)
        return Replay(*(x[index] for x in fields), self.position, self.size)


class SACState(BaselineState):
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
    replay: Replay
    normalizer: Normalizer
    envs: EnvBatch


class SACTrainer(BaselineTrainer):
    """SAC for one config and continuous-action environment; build with `make_sac`."""

    config: SACConfig = eqx.field(static=True)
    env: Environment
    actor_static: PyTree
    critic_static: PyTree
    replay_capacity: int = eqx.field(static=True)

    def _build_actor(self, key: PRNGKeyArray) -> eqx.nn.MLP:
        env = self.env
        return mlp(env.observation_size, 2 * env.action_size, self.config.policy_hidden, key=key)

    def _build_critic(self, key: PRNGKeyArray) -> eqx.nn.MLP:
        size = self.env.observation_size + self.env.action_size
        return mlp(size, "scalar", self.config.value_hidden, key=key)

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.config.learning_rate)

    def init(self) -> SACState:
        config, env = self.config, self.env
        actor_key, critic_key, env_key, run_key = jax.random.split(jax.random.key(config.seed), 4)
        actor = eqx.filter(self._build_actor(actor_key), eqx.is_array)
        critics = jax.vmap(lambda k: eqx.filter(self._build_critic(k), eqx.is_array))(
            jax.random.split(critic_key, _NUM_Q)
        )
        log_alpha = jnp.log(jnp.asarray(config.init_alpha, jnp.float32))
        optimizer = self._optimizer()
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
            replay=Replay.empty(self.replay_capacity, env.observation_size, env.action_size),
            normalizer=Normalizer.init(env.observation_size, enabled=config.normalize_observations),
            envs=reset_batch(env, config.num_envs, key=env_key),
        )

    def policy(self, state: SACState) -> DeterministicPolicy:
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
        config = self.config
        optimizer = self._optimizer()
        batch_key, next_key, actor_key = jax.random.split(key, 3)
        batch = state.replay.sample(config.batch_size, key=batch_key)
        obs = jax.vmap(state.normalizer)(batch.obs)
        next_obs = jax.vmap(state.normalizer)(batch.next_obs)
        alpha = jnp.exp(state.log_alpha)

        next_actions, next_log_probs = self._sample_actions(state.actor, next_obs, next_key)
        next_q = jnp.min(self._q_values(state.target_critics, next_obs, next_actions), axis=0)
        soft_next = next_q - alpha * next_log_probs
        target = config.reward_scale * batch.reward + config.discount * jnp.where(
            batch.terminated, 0.0, soft_next
        )

        def critic_loss(critics):
            q = self._q_values(critics, obs, batch.action)
            return 0.5 * jnp.mean(jnp.sum((q - target) ** 2, axis=0))

        def actor_loss(actor):
            actions, log_probs = self._sample_actions(actor, obs, actor_key)
            q = jnp.min(self._q_values(state.critics, obs, actions), axis=0)
            return jnp.mean(alpha * log_probs - q), log_probs

        def alpha_loss(log_alpha, log_probs):
            target_entropy = -float(self.env.action_size)
            return -jnp.mean(log_alpha * (log_probs + target_entropy))

        q_loss, critic_grads = jax.value_and_grad(critic_loss)(state.critics)
        actor_grads, log_probs = jax.grad(actor_loss, has_aux=True)(state.actor)
        alpha_grad = jax.grad(alpha_loss)(state.log_alpha, jax.lax.stop_gradient(log_probs))

        critic_updates, critic_opt = optimizer.update(critic_grads, state.critic_opt_state)
        actor_updates, actor_opt = optimizer.update(actor_grads, state.actor_opt_state)
        alpha_update, alpha_opt = optimizer.update(alpha_grad, state.alpha_opt_state)
        critics = optax.apply_updates(state.critics, critic_updates)
        targets = optax.incremental_update(critics, state.target_critics, config.tau)
        new = SACState(
            iteration=state.iteration,
            key=state.key,
            actor=optax.apply_updates(state.actor, actor_updates),
            critics=critics,
            target_critics=targets,
            log_alpha=optax.apply_updates(state.log_alpha, alpha_update),
            actor_opt_state=actor_opt,
            critic_opt_state=critic_opt,
            alpha_opt_state=alpha_opt,
            replay=state.replay,
            normalizer=state.normalizer,
            envs=state.envs,
        )
        ok = all_finite((critic_grads, actor_grads, alpha_grad))
        return select(ok, new, state), jnp.stack([q_loss, (~ok).astype(q_loss.dtype)])

    def update(self, state: SACState, key: PRNGKeyArray) -> tuple[SACState, dict]:
        config = self.config
        rollout_key, learn_key = jax.random.split(key)
        envs, transitions, actions = self._rollout(state, rollout_key)
        n = config.steps_per_iteration
        replay = state.replay.insert(
            transitions.obs.reshape(n, -1),
            actions.reshape(n, -1),
            transitions.reward.reshape(n),
            transitions.next_obs.reshape(n, -1),
            transitions.terminated.reshape(n),
        )
        normalizer = state.normalizer.update(transitions.obs.reshape(n, -1))
        state = eqx.tree_at(
            lambda s: (s.envs, s.replay, s.normalizer), state, (envs, replay, normalizer)
        )

        def learn(state):
            keys = jax.random.split(learn_key, config.grad_updates)
            state, stats = jax.lax.scan(lambda s, k: self._gradient_step(s, k), state, keys)
            return state, jnp.mean(stats[:, 0]), jnp.sum(stats[:, 1]).astype(jnp.int32)

        def wait(state):
            return state, jnp.full((), jnp.nan), jnp.zeros((), jnp.int32)

        ready = replay.size >= max(config.min_replay, 1)
        state, q_loss, skipped = jax.lax.cond(ready, learn, wait, state)
        metrics = episode_metrics(transitions) | {
            "critic_loss": q_loss,
            "skipped_updates": skipped,
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
    trainer = SACTrainer(config, env, None, None, capacity)
    return eqx.tree_at(
        lambda t: (t.actor_static, t.critic_static),
        trainer,
        (static_part(trainer._build_actor), static_part(trainer._build_critic)),
        is_leaf=lambda x: x is None,
    )
