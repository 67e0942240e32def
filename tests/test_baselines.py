"""PPO and SAC baselines: the auto-resetting environment batch against our own rollouts, the
distributions and normaliser against direct formulas, learning on small tasks, configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import Array, Float, PRNGKeyArray
from short_runs import cadence

import nfn_rl
from nfn_rl import baselines
from nfn_rl.baselines import Categorical, TanhGaussian
from nfn_rl.envs import Environment, EnvState


class Reach(Environment):
    """A contextual bandit with continuous actions: reward `exp(-((a - 0.8 tanh(2 o_0))/0.2)^2)`
    for a fresh random observation each step. A policy that ignores the observation scores
    about a third of the maximum; learning the map scores near `horizon`."""

    observation_size: int = 2
    action_size: int = 1
    discrete: bool = False
    horizon: int = 8
    max_return: float = 8.0

    def reset(self, key: PRNGKeyArray) -> EnvState:
        obs = jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0)
        # Raw key data: the state must be serialisable into checkpoints.
        physics = jax.random.key_data(key)
        return EnvState(obs, jnp.zeros(()), jnp.zeros((), bool), physics, jnp.zeros((), jnp.int32))

    def step(self, state: EnvState, action: Float[Array, "1"]) -> EnvState:
        target = 0.8 * jnp.tanh(2 * state.obs[0])
        reward = jnp.exp(-(((action[0] - target) / 0.2) ** 2))
        key, obs_key = jax.random.split(jax.random.wrap_key_data(state.physics))
        step_count = state.step_count + 1
        return EnvState(
            obs=jax.random.uniform(obs_key, (2,), minval=-1.0, maxval=1.0),
            reward=jnp.where(state.done, 0.0, reward),
            done=state.done | (step_count >= self.horizon),
            physics=jax.random.key_data(key),
            step_count=step_count,
        )


def _fixed_policy(env: Environment, *, key: PRNGKeyArray):
    return nfn_rl.make_policy(env, 8, 1, key=key)


def test_env_batch_matches_our_episode_rollouts_and_restarts():
    """Stepping the auto-resetting batch with a deterministic policy gives, for every
    environment, exactly the return `nfn_rl.episode_return` computes for it; episodes that end
    restart from `env.reset`, and only ends before the horizon count as terminations."""
    env = nfn_rl.make_env("cartpole", 40)
    policy = _fixed_policy(env, key=jax.random.key(3))
    num_envs = 32
    key = jax.random.key(0)
    envs = baselines.reset_batch(env, num_envs, key=key)
    expected = jax.vmap(lambda k: nfn_rl.episode_return(env, policy, k))(
        jax.random.split(key, num_envs)
    )

    def step(envs, step_key):
        actions = jax.vmap(lambda o: nfn_rl.policy_action(env, policy, o))(envs.state.obs)
        envs, transition = baselines.step_batch(env, envs, actions, key=step_key)
        return envs, (transition, envs.state)

    step_keys = jax.random.split(jax.random.key(1), env.horizon)
    _, (transitions, states) = jax.lax.scan(step, envs, step_keys)
    done = np.asarray(transitions.done)
    first_end = done.argmax(axis=0)
    assert done.any(axis=0).all(), "every first episode ends within the horizon"
    finished = np.asarray(transitions.finished_return)[first_end, np.arange(num_envs)]
    np.testing.assert_allclose(finished, np.asarray(expected), rtol=1e-6)
    assert np.all(np.isnan(np.asarray(transitions.finished_return)[~done]))

    # Terminations are the ends before the horizon; some episodes here also run to it.
    steps = first_end + 1
    terminated = np.asarray(transitions.terminated)[first_end, np.arange(num_envs)]
    np.testing.assert_array_equal(terminated, steps < env.horizon)
    assert terminated.any() and not terminated.all()

    # After an end, the state is a fresh reset drawn from that step's key.
    for i in range(num_envs):
        t = first_end[i]
        fresh = env.reset(jax.random.split(step_keys[t], num_envs)[i])
        np.testing.assert_array_equal(np.asarray(states.obs[t, i]), np.asarray(fresh.obs))
        assert int(states.step_count[t, i]) == 0 and not bool(states.done[t, i])
    # ... and the observation that ended the episode is kept for bootstrapping.
    i = int(np.argmax(~terminated))
    truncated_obs = transitions.next_obs[first_end[i], i]
    assert not np.array_equal(np.asarray(truncated_obs), np.asarray(states.obs[first_end[i], i]))


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=5),
    st.integers(0, 2**31 - 1),
)
def test_normalizer_matches_statistics_of_all_data(chunks, seed):
    rng = np.random.default_rng(seed)
    data = [rng.normal(3.0, 2.0, size=(n, 3)).astype(np.float32) for n in chunks]
    normalizer = baselines.Normalizer.init(3, enabled=True)
    for batch in data:
        normalizer = normalizer.update(jnp.asarray(batch))
    everything = np.concatenate(data)
    np.testing.assert_allclose(normalizer.mean, everything.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(normalizer.variance, everything.var(0), rtol=1e-3, atol=1e-4)
    obs = everything[0]
    expected = np.clip((obs - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-8), -10, 10)
    np.testing.assert_allclose(normalizer(jnp.asarray(obs)), expected, rtol=1e-3, atol=1e-3)
    disabled = baselines.Normalizer.init(3, enabled=False).update(jnp.asarray(everything))
    np.testing.assert_array_equal(disabled(jnp.asarray(obs)), obs)


def test_tanh_gaussian_log_prob_is_the_density_of_the_squashed_action():
    dist = TanhGaussian(jnp.array([0.3, -1.0]), jnp.array([0.5, 2.0]))
    u = jnp.array([0.7, -2.5])
    gaussian = jax.scipy.stats.norm.logpdf(u, dist.mean, dist.std)
    expected = jnp.sum(gaussian - jnp.log(1 - jnp.tanh(u) ** 2))
    np.testing.assert_allclose(dist.log_prob(u), expected, rtol=1e-5)
    # The density integrates to one over the squashed action (1-d, numerically).
    one = TanhGaussian(jnp.array([0.4]), jnp.array([0.8]))
    actions = np.linspace(-0.9999, 0.9999, 20001)
    density = np.exp([float(one.log_prob(jnp.array([np.arctanh(a)]))) for a in actions[::50]])
    assert abs(np.trapezoid(density, actions[::50]) - 1.0) < 0.02


def test_categorical_log_prob_and_entropy():
    dist = Categorical(jnp.log(jnp.array([0.2, 0.5, 0.3])))
    np.testing.assert_allclose(dist.log_prob(jnp.array(1)), np.log(0.5), rtol=1e-6)
    p = np.array([0.2, 0.5, 0.3])
    np.testing.assert_allclose(dist.entropy(), -(p * np.log(p)).sum(), rtol=1e-6)


def _evals(tmp_path, config, env=None):
    trainer, state = nfn_rl.train(config, env, out_dir=tmp_path, progress=False)
    rows = nfn_rl.read_metrics(tmp_path / "metrics.csv")
    return trainer, state, [r["eval_return"] for r in rows if not np.isnan(r["eval_return"])]


def test_ppo_solves_cartpole(tmp_path):
    config = baselines.PPOConfig(
        env="cartpole", horizon=200, num_envs=16, unroll_length=32, iterations=60
    )
    trainer, state, evals = _evals(tmp_path, config)
    start = float(trainer.evaluate(trainer.init(jax.random.key(0)), key=jax.random.key(0)))
    assert start < 100, start
    assert max(evals) >= 190, evals


# Each algorithm's config class and the settings of its run that learns the Reach task (over
# the shared cadence: PPO evaluates at every log, SAC at every other).
REACH_RUNS = {
    "ppo": (baselines.PPOConfig, dict(unroll_length=8, iterations=80)),
    "sac": (
        baselines.SACConfig,
        dict(iterations=240, discount=0.9, batch_size=64, min_replay=64, eval_interval=40),
    ),
}


@pytest.mark.parametrize("algo", sorted(REACH_RUNS))
def test_continuous_control_learns_the_reach_task(tmp_path, algo):
    env = Reach()
    config_class, settings = REACH_RUNS[algo]
    cadence_fields = cadence(log=20, checkpoint=40, episodes=32)
    config = config_class(num_envs=16, learning_rate=1e-3, **cadence_fields | settings)
    trainer, state, evals = _evals(tmp_path, config, env)
    start = float(trainer.evaluate(trainer.init(jax.random.key(0)), key=jax.random.key(0)))
    final = float(trainer.evaluate(state, key=jax.random.key(0)))
    assert start < 0.5 * env.max_return, start
    assert final > 0.8 * env.max_return, (start, evals, final)

    # The checkpoint restores the trained policy.
    loaded_trainer, loaded, _ = nfn_rl.load_run(tmp_path, env)
    obs = jax.random.uniform(jax.random.key(5), (16, env.observation_size), minval=-1, maxval=1)
    actions = jax.vmap(trainer.policy(state))(obs)
    np.testing.assert_array_equal(jax.vmap(loaded_trainer.policy(loaded))(obs), actions)


def test_resumed_run_reproduces_an_uninterrupted_one(tmp_path):
    config = baselines.PPOConfig(
        env="cartpole",
        horizon=50,
        num_envs=8,
        unroll_length=8,
        iterations=6,
        **cadence(log=2, checkpoint=2, episodes=2),
    )
    nfn_rl.train(config, out_dir=tmp_path / "whole", progress=False)
    stop_at = {}

    def interrupt(done):
        if done == 4:
            stop_at["done"] = done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nfn_rl.train(config, out_dir=tmp_path / "cut", progress=False, on_chunk=interrupt)
    nfn_rl.train(config, out_dir=tmp_path / "cut", progress=False, resume=True)
    whole = nfn_rl.read_metrics(tmp_path / "whole" / "metrics.csv")
    cut = nfn_rl.read_metrics(tmp_path / "cut" / "metrics.csv")
    assert stop_at == {"done": 4} and len(cut) == len(whole) == 6
    for a, b in zip(whole, cut):
        for column in ("env_steps", "return_mean", "eval_return", "critic_loss"):
            np.testing.assert_array_equal(a[column], b[column], err_msg=column)


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match=r"PPOConfig\.num_minibatches: must divide"):
        baselines.PPOConfig(num_envs=4, unroll_length=3, num_minibatches=5)
    with pytest.raises(ValueError, match=r"SACConfig\.min_replay: must be <= replay_size"):
        baselines.SACConfig(min_replay=10, replay_size=5)
    with pytest.raises(ValueError, match=r"PPOConfig\.discount: must be <= 1.0"):
        baselines.PPOConfig(discount=1.5)
    with pytest.raises(ValueError, match=r"SACConfig\.env: unknown environment 'walker'"):
        baselines.SACConfig(env="walker")
    with pytest.raises(ValueError, match="unknown algo 'dqn'"):
        baselines.baseline_config("dqn")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        baselines.baseline_config("ppo", "huge")
    with pytest.raises(ValueError, match=r"unknown PPOConfig field\(s\): batch_size"):
        baselines.baseline_config("ppo", "smoke", batch_size=3)
    with pytest.raises(ValueError, match="SAC needs continuous actions.*Cartpole"):
        nfn_rl.make_trainer(baselines.SACConfig(env="cartpole"))
    config = baselines.baseline_config("sac", "cpu", num_envs=32)
    assert nfn_rl.config_from_dict(json.loads(config.to_json())) == config


def test_presets_run_on_the_epvf_presets_environment():
    for preset in baselines.BASELINE_PRESETS:
        epvf = nfn_rl.ant_config(preset)
        for algo in ("ppo", "sac"):
            config = baselines.baseline_config(algo, preset)
            assert (config.env, config.horizon) == (epvf.env, epvf.horizon)


def test_ppo_paper_preset_matches_brax_batch_sizes():
    """Brax's Ant PPO: 16 unrolls of 5 steps from 4096 envs per update (327,680 transitions) in
    32 minibatches of 10,240, about 50M env steps in all."""
    config = baselines.baseline_config("ppo", "paper")
    assert config.steps_per_iteration == 327_680
    assert config.steps_per_iteration // config.num_minibatches == 10_240
    assert abs(config.iterations * config.steps_per_iteration - 50e6) < 1e6


def test_categorical_mode_is_the_most_likely_action():
    assert int(Categorical(jnp.array([0.1, 2.0, -1.0])).mode()) == 1
