"""`NativeAntRollout` (MuJoCo's C engine) against the MJX `Ant`: parity, determinism, errors.

Why the two backends differ at all: both run MuJoCo's physics on the same compiled model, but the
MJCF asks for one Newton iteration of the constraint solver, whose single (line-searched) step is
computed differently by MJX (float32, its own line search) and by the C engine (float64). With the
solver run to convergence (50 iterations) the position variant agrees to 3e-4 over the first five
steps instead of 0.15 after the second (measured), so the difference is the unconverged solver,
amplified by the chaotic dynamics (contacts, joint limits, the position variant's frictionloss).
Measured with the fixtures below (128 perturbed (32, 32) policies, horizon 50), largest observation
difference at the first steps:

- torque: 7e-7 after step 1, 2e-5 after step 2, then 1e-2 (velocities);
- position: after step 1, 3e-4 on positions, gravity and controls but 7e-2 on joint velocities,
  then 0.4.

After that single trajectories drift apart, but the returns agree in distribution: the mean returns
over the same 128 policies differ by 0.2 (torque) and 0.6 (position) standard errors of their
paired difference (1-6% of the spread of the returns), which the tests bound by 3.

MJX compiles slowly on CPU (several seconds per variant even with the persistent cache), so each
variant compiles one recorded rollout of the whole population (module-scoped fixture).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfn_rl import make_policy, perturb_population
from nfn_rl.envs import Ant, NativeAntRollout, NativeTrajectory
from nfn_rl.envs._native import _MIN_OVERLAP_EPISODES, _mlp_forward, _unpack_policy

HORIZON = 50
POLICIES = 128


def _population(env: Ant, num: int, width: int = 32, depth: int = 2):
    policy = make_policy(env, width, depth, key=jax.random.key(0))
    population = perturb_population(policy, num, key=jax.random.key(1), scale=0.3)
    return eqx.partition(population, eqx.is_array)


@eqx.filter_jit
def _mjx_trajectories(env: Ant, params, static):
    """Observations (reset first), rewards and done flags of each policy's MJX episode."""

    def one(p):
        policy = eqx.combine(p, static)
        start = env.reset(jax.random.key(0))

        def body(state, _):
            state = env.step(state, policy(state.obs))
            return state, (state.obs, state.reward, state.done)

        _, (obs, reward, done) = jax.lax.scan(body, start, None, length=env.horizon)
        return jnp.concatenate([start.obs[None], obs]), reward, done

    return jax.vmap(one)(params)


@pytest.fixture(scope="module", params=["torque", "position"])
def both(request):
    env = Ant(request.param, horizon=HORIZON)
    params, static = _population(env, POLICIES)
    obs, reward, done = map(np.asarray, _mjx_trajectories(env, params, static))
    # `episode_length_and_return`'s accounting: a step counts while the state before it is live.
    live = np.concatenate([np.ones((POLICIES, 1), bool), ~done[:, :-1]], axis=1)
    mjx = {"obs": obs, "reward": reward, "live": live}
    mjx["length"], mjx["return"] = live.sum(1), (reward * live).sum(1)
    with NativeAntRollout(env) as native:
        length, ret, trajectory = native.episode_lengths_and_returns(params, static, record=True)
    return request.param, mjx, (length, ret, trajectory)


def test_first_steps_match_mjx(both):
    variant, mjx, (_, _, trajectory) = both
    native_obs = trajectory.observations
    np.testing.assert_array_equal(native_obs[:, 0], mjx["obs"][:, 0])  # the reset
    if variant == "torque":
        # Measured: 7e-7 after step 1, 2e-5 after step 2.
        np.testing.assert_allclose(native_obs[:, 1:3], mjx["obs"][:, 1:3], atol=2e-4)
        np.testing.assert_allclose(trajectory.rewards[:, :2], mjx["reward"][:, :2], atol=1e-6)
    else:
        # Measured after step 1: 3e-4 on positions, gravity and controls, 7e-2 on velocities.
        velocities = np.arange(9, 23)
        rest = np.setdiff1d(np.arange(34), velocities)
        np.testing.assert_allclose(native_obs[:, 1, rest], mjx["obs"][:, 1, rest], atol=2e-3)
        np.testing.assert_allclose(
            native_obs[:, 1, velocities], mjx["obs"][:, 1, velocities], atol=0.3
        )
        np.testing.assert_allclose(trajectory.rewards[:, 0], mjx["reward"][:, 0], atol=1e-5)


def test_returns_agree_statistically(both):
    variant, mjx, (length, ret, trajectory) = both
    assert length.dtype == np.int32 and ret.dtype == np.float32
    assert length.shape == ret.shape == (POLICIES,)
    assert mjx["return"].std() > 0.1  # a diverse population, or the comparison means little
    # The same policies in both backends: the paired difference of the mean return, in standard
    # errors (measured: 0.2 for torque, 0.6 for position).
    difference = ret - mjx["return"]
    z = difference.mean() / (difference.std() / np.sqrt(POLICIES))
    assert abs(z) < 3.0, z
    assert abs(length.mean() - mjx["length"].mean()) < 0.02 * HORIZON
    if variant == "torque":
        assert (length < HORIZON).mean() > 0.05  # some episodes terminate (the Ant falls)
    # The native returns are the sums of the recorded rewards, counted as in MJX.
    np.testing.assert_allclose(ret, trajectory.rewards.sum(1), rtol=1e-5)
    np.testing.assert_array_equal(length, (~trajectory.done).sum(1) + 1)


def test_deterministic_and_independent_of_thread_count_dropping_and_overlap():
    env = Ant("torque", horizon=HORIZON)
    # Enough policies for the overlapped path (two alternating halves of the batch).
    params, static = _population(env, 2 * _MIN_OVERLAP_EPISODES)
    results = []
    for threads, drop_done, overlap in (
        (1, True, False),
        (2, True, False),
        (2, True, True),
        (2, True, True),
        (2, False, True),
        (1, True, True),
    ):
        with NativeAntRollout(
            env, num_threads=threads, drop_done=drop_done, overlap=overlap
        ) as native:
            results.append(native.episode_lengths_and_returns(params, static))
    for length, ret in results[1:]:
        np.testing.assert_array_equal(length, results[0][0])
        np.testing.assert_array_equal(ret, results[0][1])


@pytest.mark.parametrize("variant", ["torque", "position"])
def test_overlapped_recording_matches_the_sequential_one(variant):
    """The two halves of an overlapped call end at different steps (per-episode limits up to 12
    in the first half, the full horizon in the second), and each writes only its own rows."""
    env = Ant(variant, horizon=20)
    num = 2 * _MIN_OVERLAP_EPISODES
    params, static = _population(env, num)
    max_steps = np.where(np.arange(num) < num // 2, 1 + np.arange(num) % 12, 20)
    recorded = []
    for overlap in (False, True):
        with NativeAntRollout(env, num_threads=2, overlap=overlap) as native:
            recorded.append(
                native.episode_lengths_and_returns(params, static, max_steps=max_steps, record=True)
            )
    (length, ret, sequential), (length_o, ret_o, overlapped) = recorded
    np.testing.assert_array_equal(length_o, length)
    np.testing.assert_array_equal(ret_o, ret)
    assert (length[: num // 2] <= 12).all() and length[num // 2 :].max() > 12
    for field in ("observations", "qpos", "rewards", "done"):
        np.testing.assert_array_equal(getattr(overlapped, field), getattr(sequential, field))


def test_max_steps_and_record():
    env = Ant("torque", horizon=HORIZON)
    params, static = _population(env, 8)
    with NativeAntRollout(env, num_threads=1) as native:
        assert native.num_threads == 1
        length, ret, trajectory = native.episode_lengths_and_returns(
            params, static, max_steps=5, record=True
        )
    assert isinstance(trajectory, NativeTrajectory)
    assert trajectory.observations.shape == (8, 6, 34) and trajectory.rewards.shape == (8, 5)
    assert (length <= 5).all() and trajectory.done[:, -1].all()
    np.testing.assert_allclose(ret, trajectory.rewards.sum(1), rtol=1e-6)
    with NativeAntRollout(env, num_threads=1) as native:
        per_episode = np.arange(1, 9)
        length, _ = native.episode_lengths_and_returns(params, static, max_steps=per_episode)
        with pytest.raises(ValueError, match=r"shape \(8,\), got shape \(3,\)"):
            native.episode_lengths_and_returns(params, static, max_steps=per_episode[:3])
    assert (length <= per_episode).all() and length[0] == 1


def test_nonfinite_physics_ends_the_episode_with_zero_reward(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the unstable simulation to ./MUJOCO_LOG.TXT
    env = Ant("position", horizon=HORIZON)
    params, static = _population(env, 4)
    with NativeAntRollout(env, num_threads=1) as native:
        native._home_state[1 + native.model.nq] = np.nan  # a NaN trunk velocity at reset
        length, ret, trajectory = native.episode_lengths_and_returns(params, static, record=True)
    np.testing.assert_array_equal(length, 1)
    np.testing.assert_array_equal(ret, 0.0)
    assert np.isfinite(trajectory.observations).all()
    assert (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_bad_inputs_raise_one_line_value_errors():
    env = Ant("torque", horizon=10)
    params, static = _population(env, 4)
    with NativeAntRollout(env, num_threads=1) as native:

        def error(p, s=static) -> str:
            with pytest.raises(ValueError) as info:
                native.episode_lengths_and_returns(p, s)
            message = str(info.value)
            assert "\n" not in message
            return message

        short_bias = eqx.tree_at(lambda p: p.layers[1].bias, params, params.layers[1].bias[:3])
        assert "params.layers[1].bias has leading (num_envs) axis 3" in error(short_bias)
        unbatched = eqx.tree_at(lambda p: p.layers[0].weight, params, params.layers[0].weight[0])
        assert "params.layers[0].weight" in error(unbatched)
        other_env = make_policy(Ant("torque", horizon=10), 32, 3, key=jax.random.key(0))
        assert "tree structure" in error(params, eqx.partition(other_env, eqx.is_array)[1])
        wrong_input = eqx.tree_at(
            lambda p: p.layers[0].weight, params, params.layers[0].weight[:, :, :30]
        )
        assert "expected (4, out, 34)" in error(wrong_input)
        with pytest.raises(ValueError, match="max_steps"):
            native.episode_lengths_and_returns(params, static, max_steps=0)
    with pytest.raises(RuntimeError, match="closed"):
        native.episode_lengths_and_returns(params, static)
    with pytest.raises(ValueError, match="num_threads"):
        NativeAntRollout(env, num_threads=0)


@pytest.mark.parametrize("activation", [jnp.tanh, jax.nn.relu, jax.nn.softplus])
def test_numpy_policy_matches_the_equinox_policy(activation):
    env = Ant("torque", horizon=10)
    policy = make_policy(env, 16, 2, key=jax.random.key(0), activation=activation)
    population = perturb_population(policy, 6, key=jax.random.key(1), scale=0.3)
    params, static = eqx.partition(population, eqx.is_array)
    obs = np.asarray(jax.random.normal(jax.random.key(2), (6, 34)))
    layers, hidden, final, num = _unpack_policy(params, static)
    expected = jax.vmap(lambda p, o: eqx.combine(p, static)(o))(params, obs)
    assert num == 6
    np.testing.assert_allclose(_mlp_forward(layers, hidden, final, obs), expected, atol=1e-5)
