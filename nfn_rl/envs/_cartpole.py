"""Gymnasium's CartPole-v1 in JAX, step for step."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from nfn_rl.envs._protocol import Environment, EnvState

# Gymnasium's constants (gymnasium/envs/classic_control/cartpole.py).
GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360
RESET_BOUND = 0.05


class Cartpole(Environment):
    """CartPole-v1: push the cart left (action 0) or right (action 1) to keep the pole upright.

    The physics state is `(x, x_dot, theta, theta_dot)` in float32 and is also the observation.
    Every transition, including the terminating one, pays reward 1; the episode terminates when
    `|x| > 2.4` or `|theta| > 12 degrees` and is truncated after `horizon` steps (500 as in
    Gymnasium's time limit), so the maximum return equals the horizon.
    """

    horizon: int = eqx.field(static=True, default=500)
    observation_size: int = eqx.field(static=True, default=4, init=False)
    action_size: int = eqx.field(static=True, default=2, init=False)
    discrete: bool = eqx.field(static=True, default=True, init=False)

    def __check_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")

    @property
    def max_return(self) -> float:
        return float(self.horizon)

    def reset(self, key: PRNGKeyArray) -> EnvState:
        physics = jax.random.uniform(key, (4,), minval=-RESET_BOUND, maxval=RESET_BOUND)
        return EnvState(
            obs=physics,
            reward=jnp.zeros(()),
            done=jnp.zeros((), bool),
            physics=physics,
            step_count=jnp.zeros((), jnp.int32),
        )

    def step(self, state: EnvState, action: Array) -> EnvState:
        physics = _euler_step(state.physics, action)
        x, _, theta, _ = physics
        terminated = (jnp.abs(x) > X_THRESHOLD) | (jnp.abs(theta) > THETA_THRESHOLD)
        step_count = state.step_count + 1
        return EnvState(
            obs=physics,
            reward=jnp.ones(()),
            done=state.done | terminated | (step_count >= self.horizon),
            physics=physics,
            step_count=step_count,
        )


def _euler_step(physics: Float[Array, "4"], action: Array) -> Float[Array, "4"]:
    x, x_dot, theta, theta_dot = physics
    force = jnp.where(action == 1, FORCE_MAG, -FORCE_MAG)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot**2 * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos**2 / TOTAL_MASS)
    )
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    return jnp.stack(
        [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ]
    )
