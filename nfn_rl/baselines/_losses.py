"""The PPO and SAC objectives as pure functions of arrays (unit-tested on hand-computed cases)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def gae(
    rewards: Float[Array, "steps envs"],
    values: Float[Array, "steps envs"],
    next_values: Float[Array, "steps envs"],
    terminated: Bool[Array, "steps envs"],
    done: Bool[Array, "steps envs"],
    *,
    discount: float,
    gae_lambda: float,
) -> tuple[Float[Array, "steps envs"], Float[Array, "steps envs"]]:
    """Generalised advantage estimates and value targets of one unroll (time-major).

    `next_values` are the values of each step's next observation. A terminated step does not
    bootstrap; a truncated one (`done` but not `terminated`) bootstraps from its last observation.
    Either way the recursion stops at an episode's end, and it is bootstrapped from
    `next_values` at the end of the unroll. Returns `(advantages, advantages + values)`.
    """
    bootstrap = jnp.where(terminated, 0.0, discount * next_values)
    delta = rewards + bootstrap - values

    def backward(next_advantage, step):
        delta_t, done_t = step
        advantage = delta_t + discount * gae_lambda * jnp.where(done_t, 0.0, next_advantage)
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros(rewards.shape[1:]), (delta, done), reverse=True
    )
    return advantages, advantages + values


def ppo_loss(
    log_probs: Float[Array, " n"],
    old_log_probs: Float[Array, " n"],
    advantages: Float[Array, " n"],
    values: Float[Array, " n"],
    targets: Float[Array, " n"],
    entropy: Float[Array, " n"],
    *,
    clip_epsilon: float,
    value_cost: float,
    entropy_cost: float,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The clipped PPO objective on one minibatch, with advantages standardised within it;
    returns `(total loss, value loss)`."""
    advantages = (advantages - jnp.mean(advantages)) / (jnp.std(advantages) + 1e-8)
    ratio = jnp.exp(log_probs - old_log_probs)
    clipped = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
    policy_loss = -jnp.mean(jnp.minimum(ratio * advantages, clipped * advantages))
    value_loss = 0.5 * jnp.mean((values - targets) ** 2)
    total = policy_loss + value_cost * value_loss - entropy_cost * jnp.mean(entropy)
    return total, value_loss


def soft_q_target(
    rewards: Float[Array, " n"],
    terminated: Bool[Array, " n"],
    next_q: Float[Array, "num_q n"],
    next_log_probs: Float[Array, " n"],
    alpha: Float[Array, ""],
    *,
    discount: float,
    reward_scale: float,
) -> Float[Array, " n"]:
    """SAC's regression target: the scaled reward plus the discounted soft value of the next
    state (the smallest of the target Q values minus `alpha` times the next log-probability),
    without bootstrapping from terminal states."""
    soft_next = jnp.min(next_q, axis=0) - alpha * next_log_probs
    return reward_scale * rewards + discount * jnp.where(terminated, 0.0, soft_next)


def q_loss(q: Float[Array, "num_q n"], target: Float[Array, " n"]) -> Float[Array, ""]:
    """Half the squared error of every Q network, summed over networks, averaged over the batch."""
    return 0.5 * jnp.mean(jnp.sum((q - target) ** 2, axis=0))


def actor_loss(
    q: Float[Array, "num_q n"], log_probs: Float[Array, " n"], alpha: Float[Array, ""]
) -> Float[Array, ""]:
    """SAC's policy objective: `alpha * log pi(a|s) - min_i Q_i(s, a)`, averaged."""
    return jnp.mean(alpha * log_probs - jnp.min(q, axis=0))


def temperature_loss(
    log_alpha: Float[Array, ""], log_probs: Float[Array, " n"], target_entropy: float
) -> Float[Array, ""]:
    """The temperature objective: raises `alpha` while the policy's entropy is below
    `target_entropy`, lowers it above (`log_probs` are treated as constants)."""
    return -jnp.mean(log_alpha * (jax.lax.stop_gradient(log_probs) + target_entropy))
