"""PPO on our environment protocol: auto-resetting rollouts, GAE, clipped policy ratios."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl._guards import all_finite, select
from nfn_rl.baselines._common import (
    BaselineState,
    BaselineTrainer,
    episode_metrics,
    static_part,
)
from nfn_rl.baselines._config import PPOConfig
from nfn_rl.baselines._envs import EnvBatch, Transition, reset_batch, step_batch
from nfn_rl.baselines._networks import (
    DeterministicPolicy,
    Normalizer,
    distribution_type,
    mlp,
    policy_output_size,
)
from nfn_rl.envs import Environment


class PPOState(BaselineState):
    iteration: Int[Array, ""]
    key: UInt32[Array, "..."]
    networks: PyTree[Array]
    """The arrays of `(policy, value)`; the trainer holds their static parts."""
    opt_state: PyTree
    normalizer: Normalizer
    envs: EnvBatch


class _Batch(eqx.Module):
    obs: Float[Array, "n obs"]
    sample: Array
    log_prob: Float[Array, " n"]
    advantage: Float[Array, " n"]
    target: Float[Array, " n"]


class PPOTrainer(BaselineTrainer):
    """PPO for one config and environment; build with `make_ppo`."""

    config: PPOConfig = eqx.field(static=True)
    env: Environment
    networks_static: PyTree

    def _build(self, key: PRNGKeyArray) -> tuple[eqx.nn.MLP, eqx.nn.MLP]:
        policy_key, value_key = jax.random.split(key)
        config, env = self.config, self.env
        policy = mlp(
            env.observation_size, policy_output_size(env), config.policy_hidden, key=policy_key
        )
        value = mlp(env.observation_size, "scalar", config.value_hidden, key=value_key)
        return policy, value

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.chain(
            optax.clip_by_global_norm(self.config.max_grad_norm),
            optax.adam(self.config.learning_rate),
        )

    def init(self) -> PPOState:
        config = self.config
        net_key, env_key, run_key = jax.random.split(jax.random.key(config.seed), 3)
        networks = eqx.filter(self._build(net_key), eqx.is_array)
        return PPOState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            networks=networks,
            opt_state=self._optimizer().init(networks),
            normalizer=Normalizer.init(
                self.env.observation_size, enabled=config.normalize_observations
            ),
            envs=reset_batch(self.env, config.num_envs, key=env_key),
        )

    def _networks(self, state: PPOState) -> tuple[eqx.nn.MLP, eqx.nn.MLP]:
        return eqx.combine(state.networks, self.networks_static)

    def policy(self, state: PPOState) -> DeterministicPolicy:
        policy, _ = self._networks(state)
        return DeterministicPolicy(policy, state.normalizer, self.env.discrete)

    def _rollout(
        self, state: PPOState, key: PRNGKeyArray
    ) -> tuple[EnvBatch, Transition, Array, Float[Array, "steps envs"]]:
        policy, _ = self._networks(state)
        dist_type = distribution_type(self.env)

        def step(envs, step_key):
            act_key, env_key = jax.random.split(step_key)
            out = jax.vmap(lambda o: policy(state.normalizer(o)))(envs.state.obs)
            dists = jax.vmap(dist_type.from_output)(out)
            keys = jax.random.split(act_key, self.config.num_envs)
            samples = jax.vmap(lambda d, k: d.sample(key=k))(dists, keys)
            log_probs = jax.vmap(lambda d, s: d.log_prob(s))(dists, samples)
            actions = jax.vmap(dist_type.to_action)(samples)
            envs, transition = step_batch(self.env, envs, actions, key=env_key)
            return envs, (transition, samples, log_probs)

        keys = jax.random.split(key, self.config.unroll_length)
        envs, (transitions, samples, log_probs) = jax.lax.scan(step, state.envs, keys)
        return envs, transitions, samples, log_probs

    def _advantages(
        self, state: PPOState, transitions: Transition
    ) -> tuple[Float[Array, "steps envs"], Float[Array, "steps envs"]]:
        """GAE advantages and value targets; truncated episodes bootstrap from their last obs."""
        config = self.config
        _, value = self._networks(state)
        values_of = jax.vmap(jax.vmap(lambda o: value(state.normalizer(o))))
        values, next_values = values_of(transitions.obs), values_of(transitions.next_obs)
        reward = config.reward_scale * transitions.reward
        bootstrap = jnp.where(transitions.terminated, 0.0, config.discount * next_values)
        delta = reward + bootstrap - values

        def backward(next_advantage, step):
            delta_t, done_t = step
            decay = config.discount * config.gae_lambda * (1.0 - done_t)
            advantage = delta_t + decay * next_advantage
            return advantage, advantage

        init = jnp.zeros(config.num_envs)
        _, advantages = jax.lax.scan(backward, init, (delta, transitions.done), reverse=True)
        return advantages, advantages + values

    def _loss(self, networks: PyTree[Array], normalizer: Normalizer, batch: _Batch):
        config = self.config
        policy, value = eqx.combine(networks, self.networks_static)
        dist_type = distribution_type(self.env)
        obs = jax.vmap(normalizer)(batch.obs)
        dists = jax.vmap(dist_type.from_output)(jax.vmap(policy)(obs))
        log_probs = jax.vmap(lambda d, s: d.log_prob(s))(dists, batch.sample)
        ratio = jnp.exp(log_probs - batch.log_prob)
        advantage = (batch.advantage - jnp.mean(batch.advantage)) / (
            jnp.std(batch.advantage) + 1e-8
        )
        clipped = jnp.clip(ratio, 1.0 - config.clip_epsilon, 1.0 + config.clip_epsilon)
        policy_loss = -jnp.mean(jnp.minimum(ratio * advantage, clipped * advantage))
        value_loss = 0.5 * jnp.mean((jax.vmap(value)(obs) - batch.target) ** 2)
        entropy = jnp.mean(jax.vmap(lambda d: d.entropy())(dists))
        total = policy_loss + config.value_cost * value_loss - config.entropy_cost * entropy
        return total, value_loss

    def update(self, state: PPOState, key: PRNGKeyArray) -> tuple[PPOState, dict]:
        config = self.config
        rollout_key, shuffle_key = jax.random.split(key)
        envs, transitions, samples, log_probs = self._rollout(state, rollout_key)
        advantages, targets = self._advantages(state, transitions)
        n = config.steps_per_iteration
        data = _Batch(
            obs=transitions.obs.reshape(n, -1),
            sample=samples.reshape(n, *samples.shape[2:]),
            log_prob=log_probs.reshape(n),
            advantage=advantages.reshape(n),
            target=targets.reshape(n),
        )
        optimizer = self._optimizer()
        grad_fn = jax.grad(self._loss, has_aux=True)

        def minibatch_step(carry, batch):
            networks, opt_state = carry
            grads, value_loss = grad_fn(networks, state.normalizer, batch)
            updates, new_opt_state = optimizer.update(grads, opt_state, networks)
            ok = all_finite(grads)
            networks = select(ok, optax.apply_updates(networks, updates), networks)
            opt_state = select(ok, new_opt_state, opt_state)
            return (networks, opt_state), (value_loss, ~ok)

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, n)
            batches = jax.tree.map(
                lambda x: x[order].reshape(config.num_minibatches, -1, *x.shape[1:]), data
            )
            return jax.lax.scan(minibatch_step, carry, batches)

        keys = jax.random.split(shuffle_key, config.update_epochs)
        (networks, opt_state), (value_losses, skipped) = jax.lax.scan(
            epoch, (state.networks, state.opt_state), keys
        )
        # The statistics move only after the update, so the epochs see the observations
        # exactly as the rollout's policy did.
        normalizer = state.normalizer.update(data.obs)
        state = PPOState(
            iteration=state.iteration,
            key=state.key,
            networks=networks,
            opt_state=opt_state,
            normalizer=normalizer,
            envs=envs,
        )
        metrics = episode_metrics(transitions) | {
            "critic_loss": jnp.mean(value_losses),
            "skipped_updates": jnp.sum(skipped),
        }
        return state, metrics


def make_ppo(config: PPOConfig, env: Environment) -> PPOTrainer:
    """The PPO trainer for `config` on `env` (whose horizon truncates episodes)."""
    if not isinstance(config, PPOConfig):
        raise TypeError(f"make_ppo needs a PPOConfig, got {type(config).__name__}")
    trainer = PPOTrainer(config, env, networks_static=None)
    return eqx.tree_at(
        lambda t: t.networks_static,
        trainer,
        static_part(trainer._build),
        is_leaf=lambda x: x is None,
    )
