"""nfn_rl.envs.Cartpole against Gymnasium's CartPole-v1."""

import math

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfn_rl.envs import Cartpole, EnvState, make_env


@pytest.fixture(scope="module")
def jitted():
    env = Cartpole()
    return env, jax.jit(env.step), jax.jit(env.reset)


@pytest.mark.parametrize("seed", range(4))
def test_steps_match_gymnasium(jitted, seed):
    """From the same state, one step of each agrees; both then continue from Gymnasium's state
    so that float32 rounding cannot compound over the episode."""
    env, step, reset = jitted
    rng = np.random.default_rng(seed)
    gym_env = gym.make("CartPole-v1")
    gym_env.reset(seed=seed)
    state = reset(jax.random.key(seed))
    gym_env.unwrapped.state = np.asarray(state.physics, np.float64)
    steps = 0
    for _ in range(500):
        action = int(rng.integers(2))
        obs, reward, terminated, truncated, _ = gym_env.step(action)
        state = step(state, jnp.asarray(action))
        steps += 1
        np.testing.assert_allclose(np.asarray(state.obs), obs, rtol=1e-5, atol=1e-5)
        assert float(state.reward) == reward == 1.0
        assert bool(state.done) == (terminated or truncated)
        assert int(state.step_count) == steps
        if terminated or truncated:
            break
        gym_env.unwrapped.state = np.asarray(obs, np.float64)
        state = EnvState(
            obs=jnp.asarray(obs),
            reward=state.reward,
            done=state.done,
            physics=jnp.asarray(obs),
            step_count=state.step_count,
        )
    assert terminated, "a random policy should make the pole fall within 500 steps"


def test_trajectory_matches_gymnasium_without_resync(jitted):
    """A whole random episode from one shared initial state, with no resynchronisation."""
    env, step, reset = jitted
    rng = np.random.default_rng(7)
    gym_env = gym.make("CartPole-v1")
    gym_env.reset(seed=7)
    state = reset(jax.random.key(7))
    gym_env.unwrapped.state = np.asarray(state.physics, np.float64)
    for _ in range(500):
        action = int(rng.integers(2))
        obs, _, terminated, truncated, _ = gym_env.step(action)
        state = step(state, jnp.asarray(action))
        np.testing.assert_allclose(np.asarray(state.obs), obs, rtol=1e-4, atol=1e-4)
        assert bool(state.done) == (terminated or truncated)
        if terminated or truncated:
            break


def test_termination_thresholds(jitted):
    env, step, _ = jitted
    theta_limit = 12 * 2 * math.pi / 360

    def done_after_step(physics, action=1):
        physics = jnp.asarray(physics, jnp.float32)
        state = EnvState(
            obs=physics,
            reward=jnp.zeros(()),
            done=jnp.zeros((), bool),
            physics=physics,
            step_count=jnp.zeros((), jnp.int32),
        )
        return bool(step(state, jnp.asarray(action)).done)

    assert not done_after_step([0.0, 0.0, 0.0, 0.0])
    # x moves by tau * x_dot = 0.02 per step with x_dot = 1.
    assert done_after_step([2.39, 1.0, 0.0, 0.0])
    assert not done_after_step([2.37, 1.0, 0.0, 0.0])
    assert done_after_step([-2.39, -1.0, 0.0, 0.0])
    assert done_after_step([0.0, 0.0, theta_limit - 0.001, 1.0])
    assert done_after_step([0.0, 0.0, -theta_limit + 0.001, -1.0], action=0)


def test_truncation_at_horizon():
    env = Cartpole(horizon=3)
    state = env.reset(jax.random.key(0))
    dones = []
    for _ in range(4):
        # Alternating pushes keep the pole up for far longer than 3 steps.
        state = env.step(state, jnp.asarray(len(dones) % 2))
        dones.append(bool(state.done))
    assert dones == [False, False, True, True]
    assert env.max_return == 3.0
    assert make_env("cartpole").horizon == 500
    assert make_env("cartpole", horizon=7).horizon == 7


def test_reset_distribution(jitted):
    _, _, reset = jitted
    physics = jax.vmap(lambda k: reset(k).physics)(jax.random.split(jax.random.key(0), 4000))
    physics = np.asarray(physics)
    assert physics.dtype == np.float32
    assert np.all(np.abs(physics) <= 0.05)
    # Uniform on (-0.05, 0.05): every coordinate spreads over the whole interval, mean ~ 0.
    assert np.all(physics.max(axis=0) > 0.049) and np.all(physics.min(axis=0) < -0.049)
    np.testing.assert_allclose(physics.std(axis=0), 0.1 / math.sqrt(12), rtol=0.05)
    np.testing.assert_allclose(physics.mean(axis=0), 0.0, atol=0.003)
    state = reset(jax.random.key(1))
    np.testing.assert_array_equal(state.obs, state.physics)
    assert not bool(state.done) and int(state.step_count) == 0


def test_metadata():
    env = Cartpole()
    assert (env.observation_size, env.action_size, env.discrete) == (4, 2, True)
    assert env.max_return == 500.0
    with pytest.raises(ValueError, match="horizon"):
        Cartpole(horizon=0)
