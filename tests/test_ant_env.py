"""The MJX Ant: shapes, determinism, reward, termination, finiteness, variants.

MJX compiles slowly on CPU (tens of seconds per jitted function), so the position-variant tests
share one compiled full-horizon rollout (module-scoped fixture), run once over a batch of 8 envs.
"""

import math
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfn_rl.envs import Ant
from nfn_rl.envs._ant import (
    OBS_BOUND,
    AntState,
    _load_mj_model,
    _rotate_into_frame,
    tracking_reward,
)

BATCH = 8
HORIZON = 1000
STILL_REWARD = math.exp(-4.0 / 0.25)


@pytest.fixture(scope="module")
def env() -> Ant:
    return Ant(horizon=HORIZON)


@pytest.fixture(scope="module")
def reset_batch(env):
    reset = jax.jit(lambda e, keys: jax.vmap(e.reset)(keys))
    return lambda keys: reset(env, keys)


@pytest.fixture(scope="module")
def rollout(env):
    """``rollout(states, actions)``: final states and per-step (obs, reward, done), (T, B, ...)."""

    @jax.jit
    def run(env, states, actions):
        def body(s, a):
            s = jax.vmap(env.step)(s, a)
            return s, (s.obs, s.reward, s.done)

        return jax.lax.scan(body, states, actions)

    return lambda states, actions: run(env, states, actions)


def _edit_physics(states: AntState, heights, quats, vx) -> AntState:
    qpos = states.physics.qpos.at[:, 2].set(jnp.asarray(heights, jnp.float32))
    qpos = qpos.at[:, 3:7].set(jnp.asarray(quats, jnp.float32))
    qvel = states.physics.qvel.at[:, 0].set(jnp.asarray(vx, jnp.float32))
    states = eqx.tree_at(lambda s: s.physics.qpos, states, qpos)
    return eqx.tree_at(lambda s: s.physics.qvel, states, qvel)


def test_metadata(env):
    assert env.variant == "position"
    assert (env.observation_size, env.action_size, env.discrete) == (34, 8, False)
    assert env.horizon == HORIZON and env.max_return == 1000.0
    assert Ant(horizon=50).max_return == 50.0


def test_reset_deterministic_and_shaped(env, reset_batch):
    states = reset_batch(jax.random.split(jax.random.key(0), BATCH))
    other = reset_batch(jax.random.split(jax.random.key(1), BATCH))
    assert states.obs.shape == (BATCH, 34) and states.obs.dtype == jnp.float32
    assert states.reward.shape == (BATCH,) and states.done.shape == (BATCH,)
    np.testing.assert_array_equal(states.obs, other.obs)
    np.testing.assert_array_equal(states.physics.qpos, other.physics.qpos)
    obs = np.asarray(states.obs[0])
    np.testing.assert_allclose(obs[0], 0.61, rtol=1e-6)  # home trunk height
    np.testing.assert_array_equal(obs[1:23], 0.0)  # joints at home, at rest
    np.testing.assert_allclose(obs[23:26], [0.0, 0.0, -1.0])  # upright: gravity straight down
    np.testing.assert_allclose(obs[26:], [0, 1.2, 0, -1.2, 0, -1.2, 0, 1.2])  # home targets
    assert not states.done.any() and (states.step_count == 0).all()
    assert (states.nonfinite == 0).all()


def test_reward_formula():
    assert float(tracking_reward(jnp.array([2.0, 0.0]))) == pytest.approx(1.0)
    assert float(tracking_reward(jnp.array([0.0, 0.0]))) == pytest.approx(STILL_REWARD)
    assert float(tracking_reward(jnp.array([2.5, 0.0]))) == pytest.approx(math.exp(-1.0))
    assert float(tracking_reward(jnp.array([2.0, -0.5]))) == pytest.approx(math.exp(-1.0))


def test_velocity_is_taken_in_the_trunk_frame():
    # Trunk yawed by +90 degrees: moving along world +y is moving forward.
    half = math.pi / 4
    quat = jnp.array([math.cos(half), 0.0, 0.0, math.sin(half)])
    local = _rotate_into_frame(quat, jnp.array([0.0, 2.0, 0.0]))
    np.testing.assert_allclose(local, [2.0, 0.0, 0.0], atol=1e-6)
    assert float(tracking_reward(local[:2])) == pytest.approx(1.0)


def test_full_horizon_rollout(reset_batch, rollout):
    """One compiled rollout (so that pytest-xdist workers do not compile it twice) of 8 envs.

    env 0: zero action, i.e. hold the home pose; envs 1-3: random actions, some out of [-1, 1];
    env 4: upside down (only the feet collide, so the trunk falls through the floor); env 5: above
    the height range; env 6: a NaN velocity (a blown-up simulation); env 7: zero action again.
    """
    states = reset_batch(jax.random.split(jax.random.key(0), BATCH))
    upright, flipped = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]
    states = _edit_physics(
        states,
        heights=[0.61] * 5 + [1.5, 0.61, 0.61],
        quats=[upright] * 4 + [flipped] + [upright] * 3,
        vx=[0.0] * 6 + [jnp.nan, 0.0],
    )
    actions = jax.random.uniform(jax.random.key(1), (HORIZON, BATCH, 8), minval=-1.5, maxval=1.5)
    actions = actions.at[:, 0].set(0.0).at[:, 4:].set(0.0)
    final, (obs, reward, done) = rollout(states, actions)
    obs, reward, done = np.asarray(obs), np.asarray(reward), np.asarray(done)

    # Always finite and bounded, whatever the physics does.
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    assert (np.abs(obs) <= OBS_BOUND).all()
    assert ((reward >= 0.0) & (reward <= 1.0)).all()
    assert (np.asarray(final.step_count) == HORIZON).all()
    assert done[-1].all()  # truncation at the horizon, if not before

    # Random actions for a full horizon: the physics stays finite.
    assert np.isfinite(np.asarray(final.physics.qpos[:4])).all()
    np.testing.assert_array_equal(final.nonfinite, [0, 0, 0, 0, 0, 0, 1, 0])
    # Actions are clipped to [-1, 1] before becoming targets home + 0.3 * action.
    home = np.array([0, 1.2, 0, -1.2, 0, -1.2, 0, 1.2], np.float32)
    assert (np.abs(obs[:, :4, 26:] - home) <= 0.3 + 1e-5).all()

    # The home pose stands for the whole horizon under zero action ...
    for env in (0, 7):
        height = obs[:, env, 0]
        assert ((height > 0.55) & (height < 0.65)).all()
        assert not done[:-1, env].any()
    # ... and standing still earns about exp(-4 / 0.25) per step.
    np.testing.assert_allclose(reward[:, 0], STILL_REWARD, rtol=0.05)

    # Out of the height range: done on the first step at or below 0.2 / at or above 1.0.
    np.testing.assert_array_equal(done[0, 4:], [False, True, True, False])
    end = int(np.argmax(done[:, 4]))
    assert 0 < end < 100
    assert obs[end, 4, 0] <= 0.2 < obs[end - 1, 4, 0]
    # Done is sticky, and rewards after the end are zero.
    assert done[end:, 4].all() and done[:, 5:7].all()
    np.testing.assert_array_equal(reward[end + 1 :, 4], 0.0)
    np.testing.assert_array_equal(reward[1:, 5], 0.0)
    # The blown-up env earns nothing and is counted once (above).
    np.testing.assert_array_equal(reward[:, 6], 0.0)


def test_torque_variant_constructs_and_steps():
    env = Ant(variant="torque", horizon=10)
    assert env.variant == "torque" and env.n_substeps == 1
    assert (env.observation_size, env.action_size, env.max_return) == (34, 8, 10.0)
    state = env.reset(jax.random.key(0))
    np.testing.assert_allclose(state.obs[0], 0.61, rtol=1e-6)
    step = jax.jit(lambda e, s, a: e.step(s, a))
    state = step(env, state, jnp.full((8,), 2.0))
    assert np.isfinite(np.asarray(state.obs)).all()
    np.testing.assert_array_equal(state.obs[26:], 1.0)  # the clipped action
    assert int(state.step_count) == 1 and not bool(state.done)


@pytest.mark.parametrize("variant", ["position", "torque"])
def test_home_pose_inside_joint_ranges(variant):
    """At reset no joint limit is violated (it would snap the joint at the first step)."""
    model, home_qpos, _ = _load_mj_model(variant)
    for joint in range(1, model.njnt):  # joint 0 is the free joint
        low, high = model.jnt_range[joint]
        angle = home_qpos[model.jnt_qposadr[joint]]
        assert low <= angle <= high, (variant, model.joint(joint).name, angle, (low, high))
    state = Ant(variant=variant, horizon=10).reset(jax.random.key(0))
    np.testing.assert_allclose(state.physics.qpos, home_qpos, rtol=1e-6)


def test_importing_nfn_rl_prints_nothing():
    """mujoco-mjx's "Failed to import warp" lines are swallowed; nothing else is printed."""
    result = subprocess.run(
        [sys.executable, "-c", "import nfn_rl, nfn_rl.envs"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (result.stdout, result.stderr) == ("", "")


def test_unknown_variant():
    with pytest.raises(ValueError, match="'walking'"):
        Ant(variant="walking")
