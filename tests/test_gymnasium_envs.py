"""Gymnasium's MuJoCo tasks, native (`NativeGymnasiumRollout`) against Gymnasium's own `env.step`.

Both step the same MJCF with the same C engine in float64, from bitwise the same reset (the native
reset draws Gymnasium's noise with Gymnasium's generator). The one difference is the constraint
solver's warmstart: Gymnasium's ``MjData`` keeps the last substep's acceleration, while
``mujoco.rollout`` (which restarts from a state every control step) gets the acceleration recovered
from the last two velocities. The solver converges from either, to within its tolerance, so
single steps agree to rounding and whole episodes drift only where the dynamics amplify it.
Measured over 1000 random actions per episode (4 seeds, largest observation difference):
InvertedPendulum 0 (bitwise), Swimmer 2e-8, Hopper 3e-15, Walker2d 4e-13 (episodes end after
10-50 steps); HalfCheetah 5e-13 after 10 steps, 5e-7 after 50, then the contacts amplify it
chaotically (order 1 after 100-200 steps). With Gymnasium's warmstart replaced by the same
recovered one, every task agrees bitwise over the whole episode (the second test), so the
observation, reward and termination code is exact.
"""

import dataclasses
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import gymnasium
import jax
import mujoco
import numpy as np
import pytest
from example_runner import run_example
from short_runs import SMALL_NETWORKS, cadence

import nfn_rl
from nfn_rl import make_policy, perturb_population
from nfn_rl.envs import (
    NATIVE_GYMNASIUM_TASKS,
    GymnasiumEnv,
    GymnasiumVectorRollout,
    NativeGymnasiumRollout,
    make_env,
)
from nfn_rl.envs._batched import OpenLoopActor
from nfn_rl.envs._gymnasium import seeds_of

TASKS = sorted(NATIVE_GYMNASIUM_TASKS)
# Largest observation / reward differences from Gymnasium's plain loop, and the steps compared:
# a few times the measured ones (module docstring).
TOLERANCE = {
    "InvertedPendulum-v5": (0.0, 1000),
    "Swimmer-v5": (1e-6, 1000),
    "Hopper-v5": (1e-12, 1000),
    "Walker2d-v5": (1e-10, 1000),
    "HalfCheetah-v5": (1e-5, 50),
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=TASKS)
def native_episodes(request):
    """Random actions in the action space from Gymnasium's reset of each seed, played natively
    (recorded)."""
    env_id = request.param
    native = NativeGymnasiumRollout(env_id)
    task = native.task
    rng = np.random.default_rng(0)
    shape = (len(SEEDS), 1000, task.action_size)
    actions = rng.uniform(task.action_low, task.action_high, size=shape).astype(np.float32)
    start = native.reset_states(SEEDS)
    lengths, returns, trajectory = native.pool.play(
        OpenLoopActor(actions), start, 1000, record=True
    )
    native.close()
    return env_id, actions, lengths, returns, trajectory


def _gymnasium_episode(env, seed, actions, steps):
    obs, _ = env.reset(seed=seed)
    observations, rewards, terminated = [obs], [], []
    for step in range(steps):
        obs, reward, term, trunc, _ = env.step(actions[step])
        observations.append(obs)
        rewards.append(reward)
        terminated.append(term)
        if term or trunc:
            break
    return np.array(observations), np.array(rewards, np.float64), np.array(terminated)


def test_native_tasks_match_gymnasium_step_for_step(native_episodes):
    env_id, actions, lengths, returns, trajectory = native_episodes
    tolerance, steps = TOLERANCE[env_id]
    env = gymnasium.make(env_id)
    for index, seed in enumerate(SEEDS):
        observations, rewards, terminated = _gymnasium_episode(env, seed, actions[index], steps)
        taken = len(rewards)
        # The reset is bitwise Gymnasium's.
        np.testing.assert_array_equal(trajectory.observations[index, 0], observations[0])
        np.testing.assert_allclose(
            trajectory.observations[index, 1 : taken + 1], observations[1:], rtol=0, atol=tolerance
        )
        np.testing.assert_allclose(trajectory.rewards[index, :taken], rewards, atol=tolerance)
        np.testing.assert_array_equal(trajectory.terminated[index, :taken], terminated)
        if steps == 1000:  # the whole episode: it ends where Gymnasium's does
            assert lengths[index] == taken
            np.testing.assert_allclose(returns[index], rewards.sum(), atol=1000 * tolerance)
    env.close()


def test_with_the_same_warmstart_every_task_is_bitwise_gymnasium(native_episodes):
    env_id, actions, lengths, returns, trajectory = native_episodes
    env = gymnasium.make(env_id)
    sim = env.unwrapped
    model, data = sim.model, sim.data

    def simulate(ctrl, n_frames):
        # Gymnasium's `_step_mujoco_simulation`, then the warmstart `mujoco.rollout` gets.
        data.ctrl[:] = ctrl
        mujoco.mj_step(model, data, nstep=n_frames - 1)
        before = data.qvel.copy()
        mujoco.mj_step(model, data)
        mujoco.mj_rnePostConstraint(model, data)
        data.qacc_warmstart[:] = (data.qvel - before) / model.opt.timestep

    sim._step_mujoco_simulation = simulate
    for index, seed in enumerate(SEEDS):
        observations, rewards, terminated = _gymnasium_episode(env, seed, actions[index], 1000)
        taken = len(rewards)
        assert lengths[index] == taken
        np.testing.assert_array_equal(trajectory.observations[index, : taken + 1], observations)
        np.testing.assert_array_equal(trajectory.rewards[index, :taken], rewards)
        np.testing.assert_array_equal(trajectory.terminated[index, :taken], terminated)
        np.testing.assert_array_equal(trajectory.done[index, taken - 1 :], True)
    env.close()


def _population(env, num, scale=0.3):
    policy = make_policy(env, 16, 2, key=jax.random.key(0))
    population = perturb_population(policy, num, key=jax.random.key(1), scale=scale)
    params, static = eqx.partition(population, eqx.is_array)
    return jax.tree.map(np.asarray, params), static


def test_policy_returns_match_gymnasiums_vector_loop_per_seed_and_in_distribution():
    """The same MLP policies from the same seeds: equal returns (Hopper's episodes are short and
    agree to 1e-15 per step). From different seeds: the same distribution of returns."""
    env_id, num = "Hopper-v5", 48
    env = GymnasiumEnv(env_id)
    params, static = _population(env, num, scale=0.1)
    native, gym = env.rollout(), GymnasiumVectorRollout(env_id, env.horizon)
    seeds = list(range(num))
    native_lengths, native_returns = native.episode_lengths_and_returns(
        params, static, seeds, env.horizon
    )
    gym_lengths, gym_returns = gym.episode_lengths_and_returns(params, static, seeds, env.horizon)
    np.testing.assert_array_equal(native_lengths, gym_lengths)
    np.testing.assert_allclose(native_returns, gym_returns, rtol=1e-9)

    # One fixed policy over many resets: the reset noise makes its return random.
    one = jax.tree.map(lambda x: np.repeat(x[:1], 256, axis=0), params)
    native_returns = native.episode_lengths_and_returns(
        one, static, list(range(1000, 1256)), env.horizon
    )[1]
    gym_returns = gym.episode_lengths_and_returns(
        jax.tree.map(lambda x: x[:64], one), static, list(range(64)), env.horizon
    )[1]
    assert native_returns.std() > 0  # the reset noise matters
    error = np.sqrt(native_returns.var() / 256 + gym_returns.var() / 64)
    assert abs(native_returns.mean() - gym_returns.mean()) < 4 * error
    native.close()
    gym.close()


def test_epvf_trains_on_a_gymnasium_task_deterministically_and_resumes(tmp_path):
    config = nfn_rl.EPVFConfig(
        env="InvertedPendulum-v5",
        num_envs=32,
        batch_size=32,
        iterations=4,
        **cadence(log=2, checkpoint=2, episodes=4),
        **SMALL_NETWORKS,
        critic_steps=2,
        policy_steps=2,
    )
    _, straight = nfn_rl.train(config, seed=0, out_dir=tmp_path / "straight", progress=False)

    def kill_after_checkpoint(iteration):
        if iteration == config.checkpoint_interval:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        nfn_rl.train(config, seed=0, out_dir=cut, progress=False, on_chunk=kill_after_checkpoint)
    _, resumed = nfn_rl.train(config, seed=0, out_dir=cut, resume=True, progress=False)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    header = rows[0].split(",")
    lengths = [float(row.split(",")[header.index("env_steps")]) for row in rows[1:]]
    # Reset noise from the iteration's key: episodes differ in length, and each counts.
    assert all(0 < steps <= 32 * 1000 for steps in lengths)


def test_any_gymnasium_id_runs_through_the_vector_api():
    env = make_env("CartPole-v1")
    assert isinstance(env, GymnasiumEnv) and env.backend == "gymnasium"
    assert (env.observation_size, env.action_size, env.discrete, env.horizon) == (4, 2, True, 500)
    policy = make_policy(env, 8, 1, key=jax.random.key(0))
    lengths, returns = jax.vmap(lambda k: nfn_rl.episode_length_and_return(env, policy, k))(
        jax.random.split(jax.random.key(0), 3)
    )
    # CartPole earns 1 per step: the return is the length.
    np.testing.assert_array_equal(np.asarray(returns), np.asarray(lengths, np.float32))
    assert (np.asarray(lengths) >= 1).all()


def test_native_is_the_default_where_it_exists_and_keys_pick_gymnasium_seeds():
    env = make_env("Swimmer-v5")
    assert env.backend == "native" and env.reward_threshold == 360
    assert env == make_env("Swimmer-v5")  # equal envs: one compilation
    assert (env.observation_size, env.action_size, env.horizon) == (8, 2, 1000)
    keys = jax.random.split(jax.random.key(3), 4)
    assert len(set(seeds_of(np.asarray(jax.vmap(jax.random.key_data)(keys))))) == 4
    with pytest.raises(NotImplementedError, match="whole episodes"):
        env.reset(jax.random.key(0))


@pytest.mark.parametrize(
    "env_id, horizon, match",
    [
        ("NoSuchEnv-v0", None, r"unknown environment 'NoSuchEnv-v0'.*Gymnasium id"),
        ("FrozenLake-v1", None, r"'FrozenLake-v1': observation space Discrete\(16\) is not"),
        ("Blackjack-v1", None, r"'Blackjack-v1' has no max_episode_steps; pass horizon"),
        ("Blackjack-v1", 10, r"'Blackjack-v1': observation space Tuple\(Discrete"),
    ],
)
def test_bad_ids_and_unsupported_spaces_are_one_line_errors(env_id, horizon, match):
    with pytest.raises(ValueError, match=match) as error:
        make_env(env_id, horizon)
    assert "\n" not in str(error.value)


def test_native_backend_refuses_tasks_without_a_native_version():
    with pytest.raises(ValueError, match=r"no native version of 'Pendulum-v1'"):
        GymnasiumEnv("Pendulum-v1", backend="native")


def test_results_do_not_depend_on_threads_overlap_or_concurrent_callers():
    env_id, num = "Hopper-v5", 2 * 64  # enough episodes for the two overlapped halves
    env = GymnasiumEnv(env_id)
    params, static = _population(env, num, scale=0.1)
    seeds = list(range(num))
    native = env.rollout()
    reference = native.episode_lengths_and_returns(params, static, seeds, 100)
    for threads, overlap in ((1, True), (2, False)):
        other = NativeGymnasiumRollout(env_id, threads, overlap=overlap)
        result = other.episode_lengths_and_returns(params, static, seeds, 100)
        other.close()
        for a, b in zip(reference, result):
            np.testing.assert_array_equal(a, b)
    with ThreadPoolExecutor(2) as callers:
        calls = [
            callers.submit(native.episode_lengths_and_returns, params, static, seeds, 100)
            for _ in range(2)
        ]
        for call in calls:
            for a, b in zip(reference, call.result()):
                np.testing.assert_array_equal(a, b)
    native.close()
    with pytest.raises(RuntimeError, match="closed"):
        native.episode_lengths_and_returns(params, static, seeds, 100)


def test_example_trains_seeds_and_reports_against_the_threshold(tmp_path):
    flags = (
        "--env InvertedPendulum-v5 --seeds 2 --no-progress --config.iterations 2 "
        "--config.num-envs 16 --config.batch-size 16 --config.policy-width 8 "
        "--config.log-interval 1 --config.eval-interval 1 --config.checkpoint-interval 1"
    ).split()
    out = run_example("gymnasium_epvf.py", *flags, "--out", str(tmp_path))
    lines = [line for line in out.splitlines() if line.startswith("seed ")]
    assert [line.split(":")[0] for line in lines] == ["seed 0", "seed 1"]
    assert all("(threshold 950: not reached)" in line for line in lines)
    again = run_example("gymnasium_epvf.py", "--evaluate", "--out", str(tmp_path))
    evaluated = [line for line in again.splitlines() if line.startswith("seed ")]
    # The same checkpoints, the same evaluation episodes: the same returns.
    assert [line.split(" after")[0] for line in evaluated] == [
        line.split(" after")[0] for line in lines
    ]


def test_a_failing_actor_leaves_the_pool_usable():
    """An exception in the host work of an overlapped call waits for the physics in flight, so
    the next call on the same pool is unaffected."""

    class Failing(OpenLoopActor):
        def rows(self, rows):
            return Failing(self.actions[rows])

        def __call__(self, obs, live, step):
            if step == 3:
                raise ArithmeticError("actor failed")
            return super().__call__(obs, live, step)

    with NativeGymnasiumRollout("Swimmer-v5") as native:
        actions = np.zeros((128, 10, 2), np.float32)
        start = native.reset_states(range(128))
        reference = native.pool.play(OpenLoopActor(actions), start, 10)
        with pytest.raises(ArithmeticError, match="actor failed"):
            native.pool.play(Failing(actions), start, 10)
        for a, b in zip(reference, native.pool.play(OpenLoopActor(actions), start, 10)):
            np.testing.assert_array_equal(a, b)


def test_example_trains_the_es_anchor_on_the_task_defaults_populations(tmp_path, capsys):
    """`--algo es` keeps every population field of the task's EPVF default (policy, noise,
    population size, schedule, normalisation) and trains ES on them."""
    import sys
    from pathlib import Path

    from nfn_rl.baselines import ESConfig
    from nfn_rl.population import PerturbationConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import _cli
    import gymnasium_epvf

    def parse(*argv):
        return _cli.parse(gymnasium_epvf.Args, gymnasium_epvf.default_args, ("env", "algo"), argv)

    epvf = parse("--env", "Swimmer-v5").config
    es = parse("--env", "Swimmer-v5", "--algo", "es").config
    assert isinstance(es, ESConfig) and es.antithetic and es.fitness_shaping == "centered_ranks"
    shared = [field.name for field in dataclasses.fields(PerturbationConfig)]
    assert {name: getattr(es, name) for name in shared if name != "antithetic"} == {
        name: getattr(epvf, name) for name in shared if name != "antithetic"
    }
    with pytest.raises(SystemExit):  # EPVF's critic flags are not ES's
        parse("--algo", "es", "--config.critic", "flat")
    args = parse(
        *f"--env InvertedPendulum-v5 --algo es --no-progress --out {tmp_path} "
        "--config.iterations 1 --config.num-envs 8 --config.log-interval 1 "
        "--config.eval-interval 1 --config.checkpoint-interval 1".split()
    )
    gymnasium_epvf.main(args)
    assert "(threshold 950: not reached)" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["algo"] == "es"


def test_loading_the_tasks_prints_and_warns_nothing(capfd):
    """MuJoCo 4.0.1 deprecates `settotalmass`, which Gymnasium's half_cheetah.xml sets; loading
    it with `MjModel.from_xml_path` printed MuJoCo's warning on every host call of a run (151
    lines in a 40-iteration HalfCheetah run), about a file the user cannot change."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tasks = [NATIVE_GYMNASIUM_TASKS[env_id]() for env_id in TASKS]
    assert all(task.model.nbody > 1 for task in tasks)
    assert capfd.readouterr() == ("", "")
