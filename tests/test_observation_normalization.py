"""Observation normalisation (`PerturbationConfig.observation_normalization`): the running
moments are those of every observation acted on, the folded policy acts on raw observations as
the policy acts on normalised ones, every simulator sums the same observations, and a resumed
run reproduces the uninterrupted one bit for bit."""

import dataclasses

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from short_runs import cadence

import nfn_rl
from nfn_rl import baselines
from nfn_rl.envs import Cartpole, EpisodeSummary, episode_summary
from nfn_rl.population import MIN_STD, ObservationNormalizer, make_policy
from nfn_rl.run import read_metrics

OBS = 5


def _summaries(episodes: list[np.ndarray]) -> EpisodeSummary:
    """Summaries of episodes given as arrays of the observations acted on (steps, OBS)."""
    return EpisodeSummary(
        length=jnp.asarray([len(e) for e in episodes], jnp.int32),
        total=jnp.zeros(len(episodes)),
        observation_sum=jnp.asarray(np.stack([e.sum(0) for e in episodes]), jnp.float32),
        observation_square_sum=jnp.asarray(
            np.stack([(e**2).sum(0) for e in episodes]), jnp.float32
        ),
    )


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_merged_batches_have_the_moments_of_all_their_observations(lengths, seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 3.0, OBS)
    normalizer = ObservationNormalizer.empty(OBS)
    seen = []
    for batch in lengths:
        episodes = [rng.normal(1.5, scale, (n, OBS)) for n in batch]
        seen += episodes
        normalizer = normalizer.update(_summaries(episodes))
    everything = np.concatenate(seen)
    assert float(normalizer.count) == len(everything)
    if len(everything) == 0:
        np.testing.assert_array_equal(normalizer.std, np.ones(OBS))
        return
    np.testing.assert_allclose(normalizer.mean, everything.mean(0), rtol=1e-4, atol=1e-5)
    expected_std = np.maximum(everything.std(0), MIN_STD)
    np.testing.assert_allclose(normalizer.std, expected_std, rtol=1e-3, atol=1e-5)


def test_episodes_left_out_do_not_count():
    rng = np.random.default_rng(0)
    episodes = [rng.normal(size=(4, OBS)), rng.normal(size=(3, OBS)) + 100.0]
    kept = ObservationNormalizer.empty(OBS).update(_summaries(episodes), jnp.asarray([True, False]))
    alone = ObservationNormalizer.empty(OBS).update(_summaries(episodes[:1]))
    assert float(kept.count) == 4
    np.testing.assert_allclose(kept.mean, alone.mean, rtol=1e-6)
    np.testing.assert_allclose(kept.std, alone.std, rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    mean=hnp.arrays(np.float32, OBS, elements=st.floats(-5, 5, width=32)),
    log_std=hnp.arrays(np.float32, OBS, elements=st.floats(-3, 2, width=32)),
    depth=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_the_folded_policy_acts_on_raw_observations_as_the_policy_on_normalised_ones(
    mean, log_std, depth, seed
):
    std = np.exp(log_std)
    normalizer = ObservationNormalizer(
        count=jnp.asarray(10.0),
        mean=jnp.asarray(mean),
        square_deviation_sum=jnp.asarray(10.0 * std**2, jnp.float32),
    )
    key = jax.random.key(seed)
    policy = eqx.nn.MLP(OBS, 3, 8, depth, activation=jnp.tanh, key=key)
    # A stack of two policies: the fold acts on every one.
    params, static = eqx.partition(policy, eqx.is_array)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    folded = normalizer.fold(stacked)
    obs = jax.random.normal(jax.random.fold_in(key, 1), (6, OBS)) * 3 + 1
    for index in range(2):
        mlp = eqx.combine(jax.tree.map(lambda x, i=index: x[i], stacked), static)
        folded_mlp = eqx.combine(jax.tree.map(lambda x, i=index: x[i], folded), static)
        normalised = (obs - normalizer.mean) / normalizer.std
        np.testing.assert_allclose(
            jax.vmap(folded_mlp)(obs), jax.vmap(mlp)(normalised), rtol=1e-4, atol=1e-5
        )


def test_a_policy_without_a_first_bias_is_refused_by_name():
    policy = eqx.nn.MLP(OBS, 2, 4, 1, use_bias=False, key=jax.random.key(0))
    with pytest.raises(ValueError, match="observation_normalization.*bias"):
        ObservationNormalizer.empty(OBS).fold(eqx.filter(policy, eqx.is_array))


def _reference_sums(observations, lengths):
    """Sums of each episode's first `length` observations acted on."""
    steps = np.arange(observations.shape[1])[None, :, None] < np.asarray(lengths)[:, None, None]
    kept = np.where(steps, observations, 0.0)
    return kept.sum(1), (kept**2).sum(1)


def test_jax_env_sums_the_observations_acted_on_until_the_end():
    env = Cartpole(horizon=40)
    keys = jax.random.split(jax.random.key(0), 6)
    policies = jax.vmap(lambda k: eqx.filter(make_policy(env, 8, 1, key=k), eqx.is_array))(keys)
    static = eqx.filter(make_policy(env, 8, 1, key=keys[0]), eqx.is_array, inverse=True)

    def summary_and_observations(params, key):
        policy = eqx.combine(params, static)

        def step(state, _):
            return env.step(state, nfn_rl.envs.policy_action(env, policy, state.obs)), state.obs

        _, observations = jax.lax.scan(step, env.reset(key), None, length=env.horizon)
        return episode_summary(env, policy, key), observations

    summaries, observations = jax.vmap(summary_and_observations)(policies, keys)
    lengths, returns = jax.vmap(
        lambda p, k: nfn_rl.envs.episode_length_and_return(env, eqx.combine(p, static), k)
    )(policies, keys)
    np.testing.assert_array_equal(summaries.length, lengths)
    np.testing.assert_array_equal(summaries.total, returns)
    assert np.any(np.asarray(lengths) < env.horizon)  # some episodes end early: the cut matters
    obs_sum, obs_sq_sum = _reference_sums(np.asarray(observations), lengths)
    np.testing.assert_allclose(summaries.observation_sum, obs_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(summaries.observation_square_sum, obs_sq_sum, rtol=1e-5, atol=1e-5)


def test_native_ant_sums_the_observations_of_its_recorded_episodes():
    env = nfn_rl.envs.NativeAnt("torque", 30)
    keys = jax.random.split(jax.random.key(1), 4)
    policies = jax.vmap(lambda k: eqx.filter(make_policy(env, 8, 1, key=k), eqx.is_array))(keys)
    static = eqx.filter(make_policy(env, 8, 1, key=keys[0]), eqx.is_array, inverse=True)
    summaries = jax.jit(
        jax.vmap(lambda p, k: episode_summary(env, eqx.combine(p, static), k)),
    )(policies, keys)
    with env.rollout() as rollout:
        lengths, returns, trajectory = rollout.episode_lengths_and_returns(
            policies, static, record=True
        )
    np.testing.assert_array_equal(summaries.length, lengths)
    np.testing.assert_array_equal(summaries.total, returns)
    obs_sum, obs_sq_sum = _reference_sums(trajectory.observations[:, :-1], lengths)
    np.testing.assert_allclose(summaries.observation_sum, obs_sum, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(summaries.observation_square_sum, obs_sq_sum, rtol=1e-5, atol=1e-4)


def test_gymnasium_vector_rollout_sums_the_observations_acted_on():
    env = nfn_rl.envs.GymnasiumEnv("CartPole-v1", horizon=50)
    keys = jax.random.split(jax.random.key(2), 3)
    policies = jax.vmap(lambda k: eqx.filter(make_policy(env, 8, 1, key=k), eqx.is_array))(keys)
    static = eqx.filter(make_policy(env, 8, 1, key=keys[0]), eqx.is_array, inverse=True)
    summaries = jax.vmap(lambda p, k: episode_summary(env, eqx.combine(p, static), k))(
        policies, keys
    )
    # The same episodes stepped one by one in Gymnasium itself.
    import gymnasium

    seeds = nfn_rl.envs._gymnasium.seeds_of(np.asarray(jax.vmap(jax.random.key_data)(keys)))
    for index, seed in enumerate(seeds):
        policy = eqx.combine(jax.tree.map(lambda x, i=index: x[i], policies), static)
        gym_env = gymnasium.make("CartPole-v1", max_episode_steps=50)
        obs, _ = gym_env.reset(seed=seed)
        acted = []
        for _ in range(50):
            acted.append(obs)
            action = int(jnp.argmax(policy(jnp.asarray(obs, jnp.float32))))
            obs, _, terminated, truncated, _ = gym_env.step(action)
            if terminated or truncated:
                break
        acted = np.asarray(acted, np.float64)
        assert int(summaries.length[index]) == len(acted)
        np.testing.assert_allclose(summaries.observation_sum[index], acted.sum(0), rtol=1e-5)
        np.testing.assert_allclose(
            summaries.observation_square_sum[index], (acted**2).sum(0), rtol=1e-5
        )


CONFIG = dict(
    horizon=40,
    num_envs=8,
    iterations=6,
    **cadence(log=2, checkpoint=2, episodes=1),
    policy_width=8,
    observation_normalization=True,
)
CONFIGS = {
    "epvf": nfn_rl.EPVFConfig(batch_size=8, critic_width=16, **CONFIG),
    "es": baselines.ESConfig(**CONFIG),
}


@pytest.mark.parametrize("algo", sorted(CONFIGS))
def test_the_normaliser_counts_every_step_and_the_policy_carries_it(algo):
    trainer = nfn_rl.make_trainer(CONFIGS[algo])
    state = eqx.filter_jit(trainer.init)(jax.random.key(0))
    assert float(state.observations.count) == 0
    steps = 0
    for index in range(3):
        state, metrics = eqx.filter_jit(trainer.iteration)(state, jnp.asarray(index))
        steps += int(metrics["episode_steps"])
    assert float(state.observations.count) == steps > 0
    params = jax.tree.map(lambda x: x[0], state.policy)
    acting = trainer.policy(state)
    expected = state.observations.fold(params)
    for got, want in zip(
        jax.tree.leaves(eqx.filter(acting, eqx.is_array)), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(state.observations.std, 1.0)


@pytest.mark.parametrize("algo", sorted(CONFIGS))
def test_a_resumed_run_with_normalisation_is_the_uninterrupted_run(algo, tmp_path):
    config = CONFIGS[algo]

    def stop(iteration):
        if iteration == 4:
            raise KeyboardInterrupt

    whole = nfn_rl.train(config, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        nfn_rl.train(config, out_dir=tmp_path / "cut", progress=False, on_chunk=stop)
    resumed = nfn_rl.train(config, out_dir=tmp_path / "cut", progress=False, resume=True)
    for a, b in zip(jax.tree.leaves(whole[1]), jax.tree.leaves(resumed[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = [read_metrics(tmp_path / d / "metrics.csv") for d in ("whole", "cut")]
    columns = [c for c in rows[0][0] if c not in ("wall_s", "run_id")]
    table = [np.asarray([[r[c] for c in columns] for r in run], np.float64) for run in rows]
    assert table[0].shape == (config.iterations, len(columns))
    np.testing.assert_array_equal(table[0], table[1])  # NaN where both are NaN
    assert float(resumed[1].observations.count) > 0


def test_off_by_default_and_in_the_paper_preset():
    assert not nfn_rl.EPVFConfig().observation_normalization
    assert not nfn_rl.ant_config("paper").observation_normalization
    trainer = nfn_rl.make_trainer(
        dataclasses.replace(CONFIGS["es"], observation_normalization=False)
    )
    assert eqx.filter_jit(trainer.init)(jax.random.key(0)).observations is None


def test_native_gymnasium_sums_match_gymnasiums_own_loop():
    """The native task and Gymnasium's vector API, from the same resets: the same sums."""
    keys = jax.random.split(jax.random.key(3), 4)
    summaries = []
    for backend in ("native", "gymnasium"):
        env = nfn_rl.envs.GymnasiumEnv("InvertedPendulum-v5", horizon=30, backend=backend)
        policies = jax.vmap(lambda k, e=env: eqx.filter(make_policy(e, 8, 1, key=k), eqx.is_array))(
            keys
        )
        static = eqx.filter(make_policy(env, 8, 1, key=keys[0]), eqx.is_array, inverse=True)
        summaries.append(
            jax.vmap(lambda p, k, e=env, s=static: episode_summary(e, eqx.combine(p, s), k))(
                policies, keys
            )
        )
    native, gym = summaries
    np.testing.assert_array_equal(native.length, gym.length)
    np.testing.assert_allclose(native.observation_sum, gym.observation_sum, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        native.observation_square_sum, gym.observation_square_sum, rtol=1e-4, atol=1e-5
    )
