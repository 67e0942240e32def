"""PPO on our environment protocol: auto-resetting rollouts, GAE, clipped policy ratios."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, UInt32

from nfn_rl.baselines._config import PPOConfig
from nfn_rl.baselines._envs import EnvBatch, Transition, reset_batch, step_batch
from nfn_rl.baselines._losses import gae, ppo_loss
from nfn_rl.baselines._networks import (
    DeterministicPolicy,
    Normalizer,
    distribution_type,
    mlp,
    policy_output_size,
)
from nfn_rl.envs import Environment
from nfn_rl.run import (
    Trainer,
    TrainState,
    default_device_mesh,
    return_statistics,
    skip_nonfinite,
    skipped_steps,
    static_part,
)


class PPOState(TrainState):
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


def _build(config: PPOConfig, env: Environment, key: PRNGKeyArray) -> tuple[eqx.nn.MLP, ...]:
    policy_key, value_key = jax.random.split(key)
    policy = mlp(
        env.observation_size,
        policy_output_size(env),
        config.policy_width,
        config.policy_depth,
        key=policy_key,
    )
    value = mlp(
        env.observation_size, "scalar", config.value_width, config.value_depth, key=value_key
    )
    return policy, value


def _optimizer(config: PPOConfig) -> optax.GradientTransformation:
    return skip_nonfinite(
        optax.chain(
            optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate)
        )
    )


class PPOTrainer(Trainer):
    """PPO for one config and environment; build with `nfn_rl.make_trainer`."""

    config: PPOConfig = eqx.field(static=True)
    env: Environment
    mesh: Mesh = eqx.field(static=True)
    networks_static: PyTree
    num_policies: int = eqx.field(static=True, default=1)

    def init(self, key: PRNGKeyArray) -> PPOState:
        config = self.config
        net_key, env_key, run_key = jax.random.split(key, 3)
        networks = eqx.filter(_build(config, self.env, net_key), eqx.is_array)
        return PPOState(
            iteration=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(run_key),
            networks=networks,
            opt_state=_optimizer(config).init(networks),
            normalizer=Normalizer.init(
                self.env.observation_size, enabled=config.normalize_observations
            ),
            envs=reset_batch(self.env, config.num_envs, key=env_key),
        )

    def policy(self, state: PPOState, index: Int[Array, ""] | int = 0) -> DeterministicPolicy:
        policy, _ = eqx.combine(state.networks, self.networks_static)
        return DeterministicPolicy(policy, state.normalizer, self.env.discrete)

    def _unroll(
        self, state: PPOState, envs: EnvBatch, key: PRNGKeyArray
    ) -> tuple[EnvBatch, tuple[Transition, Array, Float[Array, "steps envs"]]]:
        """`unroll_length` steps of every environment with the sampling policy."""
        policy, _ = eqx.combine(state.networks, self.networks_static)
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

        return jax.lax.scan(step, envs, jax.random.split(key, self.config.unroll_length))

    def _advantages(
        self, state: PPOState, transitions: Transition
    ) -> tuple[Float[Array, "steps envs"], Float[Array, "steps envs"]]:
        """GAE advantages and value targets of one unroll."""
        config = self.config
        _, value = eqx.combine(state.networks, self.networks_static)
        values_of = jax.vmap(jax.vmap(lambda o: value(state.normalizer(o))))
        return gae(
            config.reward_scale * transitions.reward,
            values_of(transitions.obs),
            values_of(transitions.next_obs),
            transitions.terminated,
            transitions.done,
            discount=config.discount,
            gae_lambda=config.gae_lambda,
        )

    def _loss(self, networks: PyTree[Array], normalizer: Normalizer, batch: _Batch):
        config = self.config
        policy, value = eqx.combine(networks, self.networks_static)
        dist_type = distribution_type(self.env)
        obs = jax.vmap(normalizer)(batch.obs)
        dists = jax.vmap(dist_type.from_output)(jax.vmap(policy)(obs))
        return ppo_loss(
            jax.vmap(lambda d, s: d.log_prob(s))(dists, batch.sample),
            batch.log_prob,
            batch.advantage,
            jax.vmap(value)(obs),
            batch.target,
            jax.vmap(lambda d: d.entropy())(dists),
            clip_epsilon=config.clip_epsilon,
            value_cost=config.value_cost,
            entropy_cost=config.entropy_cost,
        )

    def update(self, state: PPOState, key: PRNGKeyArray) -> tuple[PPOState, dict[str, Array]]:
        config = self.config
        rollout_key, shuffle_key = jax.random.split(key)

        def unroll(envs, unroll_key):
            envs, (transitions, samples, log_probs) = self._unroll(state, envs, unroll_key)
            advantages, targets = self._advantages(state, transitions)
            return envs, (transitions, samples, log_probs, advantages, targets)

        unroll_keys = jax.random.split(rollout_key, config.unrolls_per_update)
        envs, (transitions, samples, log_probs, advantages, targets) = jax.lax.scan(
            unroll, state.envs, unroll_keys
        )
        n = config.steps_per_iteration
        data = _Batch(
            obs=transitions.obs.reshape(n, -1),
            sample=samples.reshape(n, *samples.shape[3:]),
            log_prob=log_probs.reshape(n),
            advantage=advantages.reshape(n),
            target=targets.reshape(n),
        )
        optimizer = _optimizer(config)
        grad_fn = jax.grad(self._loss, has_aux=True)

        def minibatch_step(carry, batch):
            networks, opt_state = carry
            grads, value_loss = grad_fn(networks, state.normalizer, batch)
            updates, opt_state = optimizer.update(grads, opt_state, networks)
            return (optax.apply_updates(networks, updates), opt_state), value_loss

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, n)
            batches = jax.tree.map(
                lambda x: x[order].reshape(config.num_minibatches, -1, *x.shape[1:]), data
            )
            return jax.lax.scan(minibatch_step, carry, batches)

        keys = jax.random.split(shuffle_key, config.update_epochs)
        (networks, opt_state), value_losses = jax.lax.scan(
            epoch, (state.networks, state.opt_state), keys
        )
        metrics = return_statistics(transitions.finished_return, transitions.done) | {
            "episode_steps": jnp.asarray(n),
            "critic_loss": jnp.mean(value_losses),
            "policy_lr": jnp.asarray(config.learning_rate),
            "skipped_updates": skipped_steps(opt_state) - skipped_steps(state.opt_state),
        }
        # The statistics move only after the update, so the epochs see the observations
        # exactly as the rollout's policy did.
        state = dataclasses.replace(
            state,
            networks=networks,
            opt_state=opt_state,
            normalizer=state.normalizer.update(data.obs),
            envs=envs,
        )
        return state, metrics


def make_ppo(config: PPOConfig, env: Environment) -> PPOTrainer:
    """The PPO trainer for `config` on `env` (whose horizon truncates episodes)."""
    if not isinstance(config, PPOConfig):
        raise TypeError(f"make_ppo needs a PPOConfig, got {type(config).__name__}")
    return PPOTrainer(
        config=config,
        env=env,
        mesh=default_device_mesh("PPO"),
        networks_static=static_part(lambda key: _build(config, env, key)),
    )
