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
from nfn_rl.envs._batched import MIN_OVERLAP_EPISODES as _MIN_OVERLAP_EPISODES
from nfn_rl.envs._batched import mlp_forward as _mlp_forward
from nfn_rl.envs._native import _unpack_policy

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


def test_concurrent_calls_return_the_sequential_results():
    """Two threads sharing one rollout (as the devices' host calls under `shard_map` did) take
    turns. Unguarded, calls below the overlap threshold stepped the one pool at once and hung
    (or gave wrong returns, then crashed)."""
    import threading

    env = Ant("torque", horizon=30)
    params, static = _population(env, _MIN_OVERLAP_EPISODES)
    halves = [jax.tree.map(lambda x, i=i: x[i::2], params) for i in range(2)]
    native = NativeAntRollout(env, num_threads=2)
    expected = [native.episode_lengths_and_returns(p, static) for p in halves]
    results = [[], []]
    start = threading.Barrier(2)

    def play(index):
        start.wait()
        for _ in range(3):
            results[index].append(native.episode_lengths_and_returns(halves[index], static))

    # Daemon threads with a timeout: a hang fails the test instead of stalling the suite.
    threads = [threading.Thread(target=play, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "concurrent calls hung"
    native.close()
    for index in range(2):
        assert len(results[index]) == 3
        for length, ret in results[index]:
            np.testing.assert_array_equal(length, expected[index][0])
            np.testing.assert_array_equal(ret, expected[index][1])


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_no_physics_call_outlives_a_call_that_raises(monkeypatch, error):
    import time

    from nfn_rl.envs import _batched

    env = Ant("torque", horizon=10)
    params, static = _population(env, _MIN_OVERLAP_EPISODES)
    with NativeAntRollout(env, num_threads=1) as native:
        expected = native.episode_lengths_and_returns(params, static)
        physics_ended = []
        step_physics = native._step_physics

        def slow_step_physics(*args):
            time.sleep(0.3)  # long enough that a raising caller would return first
            out = step_physics(*args)
            physics_ended.append(time.monotonic())
            return out

        def observe(self, out):
            raise error("stop")

        native._step_physics = slow_step_physics
        with monkeypatch.context() as patch:
            patch.setattr(_batched.EpisodeBatch, "observe", observe)
            with pytest.raises(error, match="stop"):
                native.episode_lengths_and_returns(params, static)
            returned = time.monotonic()
        native._executor.submit(lambda: None).result()  # whatever was still queued has run
        # The second half's physics was launched before the first half's observe raised.
        assert len(physics_ended) == 2
        assert max(physics_ended) <= returned
        length, ret = native.episode_lengths_and_returns(params, static)
    np.testing.assert_array_equal(length, expected[0])
    np.testing.assert_array_equal(ret, expected[1])


def test_default_threads_follow_the_cpu_affinity(monkeypatch):
    # Under a scheduler (`--cpus-per-task`, taskset) the process may use fewer CPUs than exist.
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    with NativeAntRollout(Ant("torque", horizon=10)) as native:
        assert native.num_threads == 3


@pytest.mark.parametrize("final_activation", [jax.nn.sigmoid, jax.nn.softplus, jnp.tanh])
def test_any_final_activation_plays(final_activation):
    """Activations without a NumPy twin are computed by JAX, whose arrays NumPy sees read-only:
    the actions are then clipped in place."""
    env = Ant("torque", horizon=10)
    policy = make_policy(env, 16, 2, key=jax.random.key(0))
    policy = eqx.tree_at(lambda p: p.final_activation, policy, final_activation)
    population = perturb_population(policy, 4, key=jax.random.key(1), scale=0.3)
    params, static = eqx.partition(population, eqx.is_array)
    with NativeAntRollout(env, num_threads=1) as native:
        length, ret = native.episode_lengths_and_returns(params, static)
    assert (length >= 1).all() and np.isfinite(ret).all()


def test_equal_native_ants_compile_once_and_keep_no_threads():
    import threading

    from nfn_rl import episode_length_and_return
    from nfn_rl.envs import NativeAnt

    traces = []

    @eqx.filter_jit
    def lengths_and_returns(env, params, static):
        traces.append(env)
        return jax.vmap(
            lambda p: episode_length_and_return(env, eqx.combine(p, static), jax.random.key(0))
        )(params)

    # Enough episodes for the overlapped path, whose helper thread used to stay alive.
    params, static = _population(Ant("torque", horizon=10), _MIN_OVERLAP_EPISODES)
    results = [lengths_and_returns(NativeAnt("torque", 10), params, static) for _ in range(2)]
    assert len(traces) == 1
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not [t.name for t in threading.enumerate() if t.name.startswith("nfn-native")]
    with NativeAntRollout(Ant("torque", horizon=10)) as native:
        np.testing.assert_array_equal(
            results[0][1], native.episode_lengths_and_returns(params, static)[1]
        )


def test_observation_statistics_of_a_native_ant_come_from_the_c_engine(monkeypatch):
    from nfn_rl.envs import NativeAnt, observation_statistics

    def no_mjx(*args):
        raise AssertionError("the native Ant's statistics stepped MJX")

    env = NativeAnt("torque", horizon=20)
    monkeypatch.setattr(Ant, "step", no_mjx)
    key = jax.random.key(3)
    mean, std = jax.jit(lambda k: observation_statistics(env, key=k, episodes=4))(key)

    # The same uniform actions (per episode: the second half of its key, split per step),
    # played open-loop by hand; the mean and deviation over the steps before each episode ended.
    def actions(k):
        keys = jax.random.split(jax.random.split(k)[1], env.horizon)
        return jax.vmap(lambda s: jax.random.uniform(s, (8,), minval=-1.0, maxval=1.0))(keys)

    with NativeAntRollout(env) as native:
        action_batch = np.asarray(jax.vmap(actions)(jax.random.split(key, 4)))
        length, _, trajectory = native.open_loop_episodes(action_batch)
    live = np.arange(env.horizon)[None] < length[:, None]
    observed = trajectory.observations[:, :-1][live]
    np.testing.assert_allclose(mean, observed.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, np.maximum(observed.std(0), 1e-3), rtol=1e-4, atol=1e-6)
