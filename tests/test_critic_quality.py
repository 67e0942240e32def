"""Fitness shaping, the critic-quality metrics, the closed-form ridge head, antithetic
populations and the ES baseline: each on a case whose answer is known."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from short_runs import SMALL_NETWORKS, cadence

import nfn_rl
import nfn_rl.population
from nfn_rl import baselines
from nfn_rl.epvf import cosine, r_squared, ridge_head, spearman
from nfn_rl.population import centered_ranks, es_gradient, shape_returns
from nfn_rl.run import CRITIC_QUALITY_METRICS, read_metrics

CARTPOLE = nfn_rl.EPVFConfig(
    horizon=50, num_envs=16, iterations=4, **cadence(log=2, checkpoint=2), **SMALL_NETWORKS
)


# --- fitness shaping -------------------------------------------------------------------------


def test_centered_ranks_span_minus_half_to_half_and_leave_invalid_entries():
    values = jnp.array([3.0, -1.0, 10.0, 7.0, jnp.nan])
    valid = jnp.array([True, True, True, True, False])
    shaped = np.asarray(centered_ranks(values, valid))
    np.testing.assert_allclose(shaped[:4], [-1 / 6, -0.5, 0.5, 1 / 6], atol=1e-7)
    assert np.isnan(shaped[4])
    # Ranks ignore the scale and outliers of the returns.
    np.testing.assert_array_equal(
        centered_ranks(values**3 + 1e6 * (values > 9), valid)[:4], shaped[:4]
    )
    np.testing.assert_array_equal(centered_ranks(jnp.array([4.0]), jnp.array([True])), [0.0])
    with pytest.raises(ValueError, match="unknown return shaping 'ranks'"):
        shape_returns("ranks", values, valid)


# --- critic-quality metrics ------------------------------------------------------------------


def test_r_squared_spearman_and_cosine_on_known_answers():
    targets = jnp.array([1.0, 2.0, 4.0, 8.0, 100.0])
    valid = jnp.array([True, True, True, True, False])
    assert float(r_squared(targets, targets, valid)) == pytest.approx(1.0)
    mean = jnp.full(5, jnp.mean(targets[:4]))
    assert float(r_squared(mean, targets, valid)) == pytest.approx(0.0, abs=1e-7)
    assert float(r_squared(-targets, targets, valid)) < 0
    assert np.isnan(r_squared(targets, jnp.ones(5), valid))
    # A monotone transform keeps the rank correlation at 1; reversing it gives -1.
    assert float(spearman(jnp.log(targets), targets, valid)) == pytest.approx(1.0)
    assert float(spearman(-targets, targets, valid)) == pytest.approx(-1.0)
    assert float(cosine(jnp.array([1.0, 0.0]), jnp.array([3.0, 3.0]))) == pytest.approx(0.5**0.5)
    assert np.isnan(cosine(jnp.zeros(2), jnp.ones(2)))


@pytest.fixture(scope="module")
def trainer_and_state():
    trainer = nfn_rl.make_trainer(CARTPOLE)
    return trainer, eqx.filter_jit(trainer.init)(jax.random.key(0))


def _population(trainer, state, num=64, antithetic=False):
    centre = jax.tree.map(lambda x: x[0], state.policy)
    candidates = nfn_rl.perturb_population(
        eqx.combine(centre, trainer.policy_static),
        num,
        key=jax.random.key(1),
        scale=0.3,
        antithetic=antithetic,
    )
    return centre, eqx.filter(candidates, eqx.is_array)


def test_a_critic_that_is_the_return_function_scores_one(trainer_and_state):
    trainer, state = trainer_and_state
    _, candidates = _population(trainer, state)
    # The returns are exactly what the critic predicts.
    returns = trainer._value(state.critic, candidates)
    valid = jnp.ones(returns.shape, bool)
    quality = trainer.critic_quality(state.critic, candidates, returns, valid)
    assert float(quality["critic_r2_unseen"]) == pytest.approx(1.0, abs=1e-5)
    assert float(quality["critic_spearman_unseen"]) == pytest.approx(1.0, abs=1e-6)
    # A critic that predicts the reversed order ranks every pair wrong.
    quality = trainer.critic_quality(state.critic, candidates, -returns, valid)
    assert float(quality["critic_spearman_unseen"]) == pytest.approx(-1.0, abs=1e-6)
    assert float(quality["critic_r2_unseen"]) < -1


def test_relative_targets_ignore_the_level_of_the_predictions(trainer_and_state):
    trainer, state = trainer_and_state
    _, candidates = _population(trainer, state)
    returns = trainer._value(state.critic, candidates) ** 3
    valid = jnp.ones(returns.shape, bool)
    shifted = eqx.tree_at(
        lambda c: c.mlp.layers[-1].bias, state.critic, replace_fn=lambda b: b + 100
    )
    for targets in ("centered_ranks", "standardized"):
        ranked = dataclasses.replace(
            trainer, config=dataclasses.replace(CARTPOLE, critic_targets=targets)
        )
        before = ranked.critic_quality(state.critic, candidates, returns, valid)
        after = ranked.critic_quality(shifted, candidates, returns, valid)
        np.testing.assert_allclose(before["critic_r2_unseen"], after["critic_r2_unseen"], atol=1e-4)
    # Raw returns have a level to predict: getting it wrong by 100 costs R^2.
    before = trainer.critic_quality(state.critic, candidates, returns, valid)
    after = trainer.critic_quality(shifted, candidates, returns, valid)
    assert float(after["critic_r2_unseen"]) < float(before["critic_r2_unseen"]) - 1


def _linear_critic(trainer, state):
    """The config's critic swapped for a flat critic of depth 0: linear in the parameters."""
    policy = trainer.policy(state)
    return nfn_rl.make_critic("flat", policy, key=jax.random.key(2), width=8, depth=0)


def test_ridge_head_fits_a_linear_function_and_tends_to_the_es_estimate(trainer_and_state):
    trainer, state = trainer_and_state
    centre, candidates = _population(trainer, state, num=256)
    critic = _linear_critic(trainer, state)
    features = jax.vmap(lambda p: ravel_pytree(p)[0])(candidates)
    valid = jnp.ones(features.shape[0], bool).at[-3:].set(False)
    direction = jax.random.normal(jax.random.key(3), features.shape[1:])
    returns = features @ direction + 2.0
    # Fewer policies (256) than parameters: the dual solve, which interpolates the valid ones.
    fitted = ridge_head(critic, features, returns, valid, penalty=1e-6)
    predictions = jax.vmap(fitted.mlp)(features)
    np.testing.assert_allclose(predictions[:-3], returns[:-3], rtol=1e-3, atol=1e-3)
    # More policies than features (the last 5 parameters alone): the primal solve, exact.
    few = features[:, -5:]
    small = nfn_rl.FlatCritic.__new__(nfn_rl.FlatCritic)
    object.__setattr__(small, "mlp", eqx.nn.MLP(5, "scalar", 8, 0, key=jax.random.key(4)))
    exact = ridge_head(small, few, few @ direction[-5:] - 1.0, valid, penalty=1e-8)
    np.testing.assert_allclose(
        jax.vmap(exact.mlp)(few)[:-3], (few @ direction[-5:] - 1.0)[:-3], rtol=1e-3, atol=1e-3
    )
    # A large penalty turns the weights towards the ES estimate of centred-rank targets.
    ranked = centered_ranks(returns, valid)
    shrunk = ridge_head(critic, features, ranked, valid, penalty=1e6)
    flat_centre = ravel_pytree(centre)[0]
    estimate = es_gradient(features - flat_centre, ranked, valid)
    assert float(cosine(shrunk.mlp.layers[-1].weight[0], estimate)) > 0.999


def test_es_cosine_is_one_for_a_critic_whose_gradient_is_the_es_estimate(trainer_and_state):
    trainer, state = trainer_and_state
    centre, candidates = _population(trainer, state, num=64, antithetic=True)
    returns = jax.random.uniform(jax.random.key(5), (64,))
    valid = jnp.ones(64, bool)
    flat_centre = ravel_pytree(centre)[0]
    deltas = jax.vmap(lambda p: ravel_pytree(p)[0])(candidates) - flat_centre
    estimate = es_gradient(deltas, centered_ranks(returns, valid), valid)
    critic = _linear_critic(trainer, state)
    critic = eqx.tree_at(lambda c: c.mlp.layers[-1].weight, critic, estimate[None])
    linear = dataclasses.replace(
        trainer, critic_static=eqx.filter(critic, eqx.is_array, inverse=True)
    )
    value = linear.es_cosine(eqx.filter(critic, eqx.is_array), centre, candidates, returns, valid)
    assert float(value) == pytest.approx(1.0, abs=1e-5)
    flipped = eqx.tree_at(lambda c: c.mlp.layers[-1].weight, critic, -estimate[None])
    value = linear.es_cosine(eqx.filter(flipped, eqx.is_array), centre, candidates, returns, valid)
    assert float(value) == pytest.approx(-1.0, abs=1e-5)


# --- antithetic populations ------------------------------------------------------------------


def test_antithetic_pairs_mirror_each_other_around_the_centre(trainer_and_state):
    trainer, state = trainer_and_state
    centre, candidates = _population(trainer, state, num=8, antithetic=True)
    flats = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(candidates))
    flat_centre = np.asarray(ravel_pytree(centre)[0])
    np.testing.assert_allclose(flats[:4] + flats[4:], np.tile(2 * flat_centre, (4, 1)), atol=1e-6)
    assert np.all(np.abs(flats[:4] - flat_centre).max(axis=1) > 1e-3)
    with pytest.raises(ValueError, match="even"):
        nfn_rl.EPVFConfig(num_envs=7, antithetic=True)
    with pytest.raises(ValueError, match="EPVFConfig.antithetic"):
        nfn_rl.EPVFConfig(antithetic=True, multiple_policies=True)


def test_a_reward_shift_reaches_what_is_learned_from_and_not_the_reported_returns(
    trainer_and_state,
):
    """Cartpole pays 1 per step, so a shift of 0.25 per step leaves 0.75 of every return in the
    buffer the critic fits, while the metrics keep the environment's returns."""
    trainer, state = trainer_and_state
    shifted = nfn_rl.make_trainer(dataclasses.replace(CARTPOLE, reward_shift=0.25))
    key = jax.random.key(5)
    plain_state, plain = eqx.filter_jit(trainer.update)(state, key)
    shifted_state, metrics = eqx.filter_jit(shifted.update)(state, key)
    for name in ("return_mean", "return_max", "episode_steps"):
        assert float(metrics[name]) == float(plain[name]), name
    plain_returns = np.asarray(plain_state.buffer.items[1][: CARTPOLE.num_envs])
    assert plain_returns.min() >= 1.0
    np.testing.assert_allclose(
        np.asarray(shifted_state.buffer.items[1][: CARTPOLE.num_envs]),
        0.75 * plain_returns,
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="ESConfig.reward_shift"):
        baselines.ESConfig(reward_shift=float("nan"))


# --- the metrics in every run ----------------------------------------------------------------


def test_every_epvf_run_records_the_critic_quality_columns(tmp_path):
    config = dataclasses.replace(CARTPOLE, critic_targets="centered_ranks", antithetic=True)
    nfn_rl.train(config, out_dir=tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.csv")
    for name in CRITIC_QUALITY_METRICS:
        values = [row[name] for row in rows]
        assert all(np.isfinite(values)), name
    assert all(-1 <= row["critic_es_cosine"] <= 1 for row in rows)
    assert all(-1 <= row["critic_spearman_unseen"] <= 1 for row in rows)


# --- the ES baseline -------------------------------------------------------------------------


ES = baselines.ESConfig(
    horizon=50,
    num_envs=16,
    iterations=20,
    **cadence(log=5, checkpoint=10),
    policy_width=8,
    noise_scale=0.1,
    policy_lr=3e-2,
    policy_lr_end=3e-2,
)


def test_es_steps_along_the_rank_weighted_perturbations(tmp_path):
    trainer = nfn_rl.make_trainer(ES)
    state = eqx.filter_jit(trainer.init)(jax.random.key(0))
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0)
    new, metrics = eqx.filter_jit(trainer.update)(state, jax.random.split(key)[0])
    population = eqx.filter_jit(lambda t, s, k: t.collect(s.policy, key=k))(
        trainer, state, jax.random.split(key)[0]
    )
    candidates, returns = population.params, population.returns
    flat_centre, _ = ravel_pytree(jax.tree.map(lambda x: x[0], state.policy))
    deltas = jax.vmap(lambda p: ravel_pytree(p)[0])(candidates) - flat_centre
    valid = jnp.ones(returns.shape, bool)
    estimate = es_gradient(deltas, centered_ranks(returns, valid), valid)
    step = ravel_pytree(jax.tree.map(lambda x: x[0], new.policy))[0] - flat_centre
    # Adam's first step is learning_rate * sign(gradient) (to its epsilon) wherever the
    # gradient is not zero.
    moved = np.abs(np.asarray(estimate)) > 1e-6
    np.testing.assert_allclose(
        np.asarray(step)[moved], 3e-2 * np.sign(np.asarray(estimate))[moved], rtol=1e-3
    )
    assert all(np.isnan(float(metrics[name])) for name in ("critic_loss",))


def test_es_run_directory_resume_and_learning(tmp_path):
    class Interrupted(Exception):
        pass

    def stop_after_checkpoint(iteration):
        if iteration == ES.checkpoint_interval:
            raise Interrupted

    _, whole = nfn_rl.train(ES, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(Interrupted):
        nfn_rl.train(ES, out_dir=tmp_path / "b", progress=False, on_chunk=stop_after_checkpoint)
    _, resumed = nfn_rl.train(ES, out_dir=tmp_path / "b", resume=True, progress=False)
    rows_a = read_metrics(tmp_path / "a" / "metrics.csv")
    rows_b = read_metrics(tmp_path / "b" / "metrics.csv")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("wall_s", "run_id")} for r in rows]

    assert str(strip(rows_a)) == str(strip(rows_b))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    trainer, state, header = nfn_rl.load_run(tmp_path / "b")
    assert header["config"]["algo"] == "es" and int(state.iteration) == ES.iterations
    # Cartpole: ES improves the perturbed policies' mean return within 20 iterations.
    first = np.mean([r["return_mean"] for r in rows_a[:3]])
    last = np.mean([r["return_mean"] for r in rows_a[-3:]])
    assert last > first + 5, (first, last)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_es_presets_roll_out_the_epvf_presets_populations(preset):
    es = baselines.baseline_config("es", preset)
    epvf = nfn_rl.ant_config(preset)
    changed = set(baselines.ES_SETTINGS)
    for field in dataclasses.fields(nfn_rl.population.PerturbationConfig):
        if field.name not in changed:
            assert getattr(es, field.name) == getattr(epvf, field.name), field.name
    assert es.antithetic and es.fitness_shaping == "centered_ranks"
    # The levers stay off in the paper's recipe and preset.
    paper = nfn_rl.ant_config("paper")
    assert not paper.antithetic and paper.critic_targets == "returns" and paper.critic_ridge is None
