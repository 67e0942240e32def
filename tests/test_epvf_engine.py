"""The EPVF engine: buffer, perturbations, critics, config, rollouts and the training loop."""

import dataclasses
import json
import math
from collections import deque

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from short_runs import cadence

import nfn_rl
from nfn_rl.envs import Cartpole, EnvState
from nfn_rl.run import read_metrics

# One small config for every training test, so that the suite compiles its chunk function once.
SMALL = nfn_rl.EPVFConfig(
    horizon=200,
    num_envs=8,
    iterations=60,
    **cadence(log=10, checkpoint=30),
    policy_width=16,
    critic_width=32,
    noise_scale=0.3,
)
SEED = 5


def _entries(values):
    """Buffer entries whose params are a small pytree that encodes each entry's value."""
    values = np.asarray(values, np.float32)
    return {"a": values[:, None] * np.ones((1, 3), np.float32), "b": (values, -values)}, values


def _empty(example_params, capacity):
    """A buffer of (params, return) pairs, as EPVF keeps them."""
    return nfn_rl.make_buffer((example_params, jnp.zeros(())), capacity)


_insert = jax.jit(lambda buffer, params, returns, mask=None: buffer.insert((params, returns), mask))


def _returns(buffer):
    return np.asarray(buffer.items[1])


def _params(buffer):
    return buffer.items[0]


# --- replay buffer ---------------------------------------------------------------------------


def _fifo_contents(buffer):
    """The stored returns, oldest first."""
    size, position = int(buffer.size), int(buffer.position)
    returns = _returns(buffer)
    if size < buffer.capacity:
        return list(returns[:size])
    return list(np.roll(returns, -position))


def test_buffer_fifo_order_and_wrap():
    buffer = _empty(jax.tree.map(lambda x: x[0], _entries([0.0])[0]), 5)
    buffer = _insert(buffer, *_entries([0, 1, 2]))
    assert (int(buffer.size), int(buffer.position)) == (3, 3)
    buffer = _insert(buffer, *_entries([3, 4, 5]))
    assert (int(buffer.size), int(buffer.position)) == (5, 1)
    # Slot 0 was the oldest (0) and now holds the newest (5).
    np.testing.assert_array_equal(_returns(buffer), [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(_params(buffer)["a"][:, 0], [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(_params(buffer)["b"][1], [-5, -1, -2, -3, -4])
    assert _fifo_contents(buffer) == [1, 2, 3, 4, 5]
    # A batch larger than the capacity keeps its last `capacity` entries.
    buffer = _insert(buffer, *_entries(range(10, 17)))
    assert _fifo_contents(buffer) == [12, 13, 14, 15, 16]
    np.testing.assert_array_equal(_params(buffer)["a"][:, 2], _returns(buffer))


@pytest.mark.parametrize("capacity", [1, 3, 5])
def test_buffer_matches_a_deque(capacity):
    """Masked inserts of any batch size behave like appending the kept entries to a deque."""
    rng = np.random.default_rng(capacity)
    reference = deque(maxlen=capacity)
    buffer = _empty({"w": jnp.zeros(2)}, capacity)
    counter = 0
    for _ in range(12):
        batch = int(rng.choice([1, 4, 7]))
        mask = rng.random(batch) < 0.7
        values = np.arange(counter, counter + batch, dtype=np.float32)
        counter += batch
        params = {"w": np.stack([values, -values], axis=1)}
        buffer = _insert(buffer, params, values, mask)
        reference.extend(v for v, keep in zip(values, mask, strict=True) if keep)
        assert _fifo_contents(buffer) == list(reference)
    np.testing.assert_array_equal(_params(buffer)["w"][:, 0], _returns(buffer))
    np.testing.assert_array_equal(_params(buffer)["w"][:, 1], -_returns(buffer))


def test_buffer_sampling_without_replacement_from_filled_part():
    buffer = _empty(jax.tree.map(lambda x: x[0], _entries([0.0])[0]), 50)
    buffer = _insert(buffer, *_entries(range(1, 31)))
    sample = jax.jit(lambda b, k: b.sample(16, key=k))
    counts = np.zeros(31)
    for i in range(400):
        (params, returns), valid = sample(buffer, jax.random.key(i))
        returns = np.asarray(returns)
        assert bool(valid.all())
        assert len(set(returns)) == 16, "sampled with replacement"
        assert set(returns) <= set(range(1, 31)), "sampled an unfilled slot"
        np.testing.assert_array_equal(params["a"][:, 0], returns)
        counts[returns.astype(int)] += 1
    # Each of the 30 entries is drawn with probability 16/30 per sample.
    expected = 400 * 16 / 30
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - expected) < 5 * math.sqrt(expected))


def test_buffer_sample_smaller_than_batch():
    buffer = _empty(jax.tree.map(lambda x: x[0], _entries([0.0])[0]), 8)
    buffer = _insert(buffer, *_entries([7, 8, 9]))
    (_, returns), valid = buffer.sample(5, key=jax.random.key(0))
    assert list(np.asarray(valid)) == [True, True, True, False, False]
    assert sorted(np.asarray(returns)[:3]) == [7, 8, 9]
    # A batch larger than the capacity, with the buffer full.
    buffer = _insert(buffer, *_entries(range(10, 20)))
    (_, returns), valid = buffer.sample(12, key=jax.random.key(1))
    assert int(valid.sum()) == 8
    assert sorted(np.asarray(returns)[np.asarray(valid)]) == list(range(12, 20))


# --- perturbations ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    return nfn_rl.make_policy(Cartpole(), 64, 2, key=jax.random.key(0))


_perturb = eqx.filter_jit(nfn_rl.perturb)


def _flat_batch(policies):
    """`flat_params` of each policy in a stack (leaves in tree order, like `ravel_pytree`)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(policies, eqx.is_array))]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def _flat(policy):
    return np.asarray(nfn_rl.flat_params(policy))


def test_uniform_scaled_noise_bounds_and_zeros(policy):
    # Zero out one layer's bias: zero weights must stay exactly zero.
    policy = eqx.tree_at(lambda p: p.layers[1].bias, policy, jnp.zeros(64))
    base = _flat(policy)
    deltas = []
    for i in range(20):
        perturbed = _perturb(policy, key=jax.random.key(i), noise="uniform_scaled", scale=0.3)
        delta = _flat(perturbed) - base
        assert np.all(np.abs(delta) <= 0.3 * np.abs(base) + 1e-7)
        assert np.all(delta[base == 0] == 0)
        deltas.append(delta)
    # Uniform on (-0.3|w|, 0.3|w|): |delta| / (0.3 |w|) has mean 1/2 and fills the interval.
    nonzero = base != 0
    ratio = np.abs(np.stack(deltas)[:, nonzero]) / (0.3 * np.abs(base[nonzero]))
    assert abs(ratio.mean() - 0.5) < 0.01
    assert ratio.max() > 0.99


def test_gaussian_noise_std_and_weight_clip(policy):
    base = _flat(policy)
    perturbed = _flat(_perturb(policy, key=jax.random.key(0), scale=0.7))
    delta = perturbed - base
    assert abs(delta.std() - 0.7) < 0.03
    assert abs(delta.mean()) < 0.03
    clipped = _flat(_perturb(policy, key=jax.random.key(0), scale=0.7, weight_clip=0.2))
    assert np.abs(clipped).max() <= 0.2 + 1e-6
    # Clipping only changes the large perturbed weights.
    small = np.abs(perturbed) < 0.19
    np.testing.assert_allclose(clipped[small], perturbed[small], atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        nfn_rl.perturb(policy, key=jax.random.key(0), noise="laplace")


def test_perturb_population_single_and_multiple(policy):
    base = _flat(policy)
    population = eqx.filter_jit(nfn_rl.perturb_population)(
        policy, 6, key=jax.random.key(1), scale=0.1
    )
    flats = _flat_batch(population)
    assert flats.shape == (6, base.size)
    # All are different perturbations of the same centre.
    assert np.all(np.abs(flats - base).std(axis=1) > 0.05)
    assert len({row.tobytes() for row in flats}) == 6
    np.testing.assert_allclose(flats.mean(axis=0), base, atol=0.3)

    # Three policies stacked: `policy` and two rescaled copies (no new initialiser compiles).
    params, static = eqx.partition(policy, eqx.is_array)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x, -x]), params)
    centres = eqx.combine(stacked, static)
    perturbed = eqx.filter_jit(nfn_rl.perturb_population)(
        centres, 3, key=jax.random.key(3), multiple_policies=True, scale=0.01
    )
    centre_flats = np.stack([base, 0.5 * base, -base])
    perturbed_flats = _flat_batch(perturbed)
    # Each policy is perturbed once, around itself.
    assert np.abs(perturbed_flats - centre_flats).max() < 0.1
    assert np.all(np.abs(perturbed_flats - centre_flats).std(axis=1) > 0.005)
    with pytest.raises(ValueError, match="stacked"):
        nfn_rl.perturb_population(centres, 4, key=jax.random.key(3), multiple_policies=True)


# --- critics and rollouts --------------------------------------------------------------------


def test_flat_critic_gradient_reaches_policy(policy):
    critic = nfn_rl.make_critic("flat", policy, key=jax.random.key(1), width=32, depth=2)
    assert isinstance(critic, nfn_rl.Critic)
    value = critic(policy)
    assert value.shape == ()
    grads = eqx.filter_jit(eqx.filter_grad(lambda p: critic(p)))(policy)
    grad_norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert len(grad_norms) == 6 and all(n > 0 for n in grad_norms)
    with pytest.raises(ValueError, match="known: .*flat"):
        nfn_rl.make_critic("nope", policy, key=jax.random.key(1))
    assert "flat" in nfn_rl.critic_names()


def _constant_action_policy(action: int):
    """A policy whose logits always favour `action` (all weights zero, final bias picks it)."""
    policy = nfn_rl.make_policy(Cartpole(), 8, 2, key=jax.random.key(0))
    params, static = eqx.partition(policy, eqx.is_array)
    policy = eqx.combine(jax.tree.map(jnp.zeros_like, params), static)
    bias = jnp.zeros(2).at[action].set(1.0)
    return eqx.tree_at(lambda p: p.layers[-1].bias, policy, bias)


def test_episode_return_counts_until_done():
    env = Cartpole()
    policy = _constant_action_policy(1)
    key = jax.random.key(5)
    # Reference: step by hand until done.
    step = jax.jit(env.step)
    state, steps = env.reset(key), 0
    while not bool(state.done):
        state = step(state, jnp.asarray(1))
        steps += 1
    assert 5 < steps < 30
    rollout = eqx.filter_jit(nfn_rl.episode_length_and_return)
    length, ret = rollout(env, policy, key)
    assert (int(length), float(ret)) == (steps, steps)
    # Truncation: a short horizon caps the return.
    length, ret = rollout(Cartpole(horizon=4), policy, key)
    assert (int(length), float(ret)) == (4, 4.0)


def test_episode_return_vmaps_over_policies():
    env = Cartpole(horizon=100)
    policies = [_constant_action_policy(a) for a in (0, 1)]
    policies.append(nfn_rl.make_policy(env, 8, 2, key=jax.random.key(9)))
    key = jax.random.key(2)
    single = eqx.filter_jit(nfn_rl.episode_return)
    expected = [float(single(env, p, key)) for p in policies]
    assert len(set(expected)) > 1
    params = [eqx.filter(p, eqx.is_array) for p in policies]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    static = eqx.filter(policies[0], eqx.is_array, inverse=True)
    batched = jax.jit(jax.vmap(lambda p: nfn_rl.episode_return(env, eqx.combine(p, static), key)))(
        stacked
    )
    np.testing.assert_array_equal(batched, expected)


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("env", "pendulum"),
        ("horizon", 0),
        ("num_envs", 0),
        ("batch_size", -1),
        ("buffer_size", 0),
        ("critic_steps", 0),
        ("policy_lr", 0.0),
        ("critic_lr", float("nan")),
        ("policy_lr_schedule", "cosine"),
        ("noise", "laplace"),
        ("noise_scale", -0.1),
        ("perturbed_weight_clip", 0.0),
        ("weight_clip", -1.0),
        ("weight_decay", -1e-3),
        ("policy_width", 0),
        ("policy_depth", -1),
        ("critic", "transformer"),
        ("critic_width", 0),
        ("unf_channels", 0),
        ("probing_states", 0),
        ("iterations", 70),
        ("checkpoint_interval", 70),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"EPVFConfig\.{field}\b"):
        nfn_rl.EPVFConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("num_envs", 2.5), ("multiple_policies", "yes")])
def test_config_wrong_types_name_field(field, value):
    # Under the jaxtyping import hook the annotation check (a TypeError) comes first.
    with pytest.raises((ValueError, TypeError), match=field):
        nfn_rl.EPVFConfig(**{field: value})


def test_config_json_round_trip():
    config = dataclasses.replace(SMALL, weight_clip=0.1, policy_lr_schedule="exponential")
    assert nfn_rl.EPVFConfig.from_json(config.to_json()) == config
    assert hash(config) == hash(nfn_rl.EPVFConfig.from_json(config.to_json()))


def test_exponential_schedule_end_values():
    config = nfn_rl.EPVFConfig(
        iterations=100, policy_lr=1e-3, policy_lr_end=1e-7, policy_lr_schedule="exponential"
    )
    np.testing.assert_allclose(nfn_rl.policy_lr_at(config, 0), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(nfn_rl.policy_lr_at(config, 99), 1e-7, rtol=1e-5)
    # Geometric in between: a third of the way, a third of the decades.
    np.testing.assert_allclose(nfn_rl.policy_lr_at(config, 33), 1e-3 * 10 ** (-4 / 3), rtol=1e-5)
    constant = dataclasses.replace(config, policy_lr_schedule="constant")
    np.testing.assert_allclose(nfn_rl.policy_lr_at(constant, 99), 1e-3, rtol=1e-6)


# --- training --------------------------------------------------------------------------------


def _without_wall(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "run_id")} for r in rows]


def _same(rows_a, rows_b):
    """Equal metrics, NaN equal to NaN (iterations without evaluation)."""
    assert len(rows_a) == len(rows_b)
    for a, b in zip(_without_wall(rows_a), _without_wall(rows_b), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a, b)


def _check_run_directory(out, state):
    assert nfn_rl.EPVFConfig.from_json((out / "config.json").read_text()) == SMALL
    rows = read_metrics(out / "metrics.csv")
    assert [r["iteration"] for r in rows] == list(range(SMALL.iterations))
    for column in ("env_steps", "wall_s", "return_mean", "return_max", "eval_return"):
        assert column in rows[0]
    steps = [r["env_steps"] for r in rows]
    assert all(b - a >= SMALL.num_envs for a, b in zip(steps, steps[1:], strict=False))
    assert all(r["return_max"] >= r["return_mean"] for r in rows)
    assert all(math.isfinite(r["critic_loss"]) for r in rows)
    evals = [r["eval_return"] for r in rows]
    assert [i for i, e in enumerate(evals) if not math.isnan(e)] == list(range(9, 60, 10))
    assert (out / "returns.png").stat().st_size > 1000
    with (out / "checkpoint.eqx").open("rb") as f:
        header = json.loads(f.readline())
    assert header["iteration"] == SMALL.iterations
    assert header["env_steps"] == rows[-1]["env_steps"]
    assert header["seed"] == SEED
    assert nfn_rl.EPVFConfig.from_dict(header["config"]) == SMALL
    assert int(state.iteration) == SMALL.iterations
    assert int(state.buffer.size) == SMALL.iterations * SMALL.num_envs


def _check_learning(out):
    evals = [r["eval_return"] for r in read_metrics(out / "metrics.csv")]
    evals = [e for e in evals if not math.isnan(e)]
    # The initial policies balance for ~10 steps (horizon 200). Over 8 seeds of this config, 7
    # passed this bound after 60 iterations; this seed reached ~200.
    assert evals[0] < 30, evals
    assert max(evals[-3:]) >= max(40, 3 * evals[0]), evals


class _Interrupted(Exception):
    pass


def test_training_run_determinism_and_resume(tmp_path):
    """One test, so that the training chunk is compiled once even under pytest-xdist.

    Run B is killed right after its first checkpoint and resumed. Its first half ran from scratch
    with the same seed as run A (determinism), its second half from the checkpoint (resume); all
    its metrics but wall_s and its final state must equal A's.
    """
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    _, state_a = nfn_rl.train(SMALL, seed=SEED, out_dir=out_a, progress=False)
    _check_run_directory(out_a, state_a)
    _check_learning(out_a)

    def kill_after_checkpoint(iteration):
        if iteration == SMALL.checkpoint_interval:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        nfn_rl.train(
            SMALL, seed=SEED, out_dir=out_b, progress=False, on_chunk=kill_after_checkpoint
        )
    rows_a = read_metrics(out_a / "metrics.csv")
    rows_b = read_metrics(out_b / "metrics.csv")
    assert len(rows_b) == SMALL.checkpoint_interval
    _same(rows_a[: len(rows_b)], rows_b)
    # A row past the checkpoint and a half-written one, as a kill in the next chunk would leave.
    with (out_b / "metrics.csv").open("a") as f:
        f.write("30,1,1.0,1.0,1.0,nan,1.0,0.001,0,0\n31,2,1.0,")
    _, state_b = nfn_rl.train(SMALL, seed=SEED, out_dir=out_b, resume=True, progress=False)
    _same(rows_a, read_metrics(out_b / "metrics.csv"))
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)

    other = dataclasses.replace(SMALL, noise_scale=0.5)
    with pytest.raises(ValueError, match="noise_scale"):
        nfn_rl.train(other, seed=SEED, out_dir=out_b, resume=True, progress=False)
    with pytest.raises(ValueError, match="seed 5, not seed 6"):
        nfn_rl.train(SMALL, seed=6, out_dir=out_b, resume=True, progress=False)


def test_resume_without_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoint.eqx")):
        nfn_rl.train(SMALL, out_dir=tmp_path, resume=True, progress=False)


# --- non-finite values -----------------------------------------------------------------------


class NaNRewardCartpole(Cartpole):
    """Cartpole whose reward is NaN whenever the cart is right of x = 0.05."""

    def step(self, state: EnvState, action):
        state = super().step(state, action)
        return dataclasses.replace(
            state, reward=jnp.where(state.obs[0] > 0.05, jnp.nan, state.reward)
        )


def test_nonfinite_returns_never_enter_buffer_or_params(tmp_path):
    # Also the paper's Ant recipe and its ablation switches, which need a compilation of their own
    # anyway: scaled uniform noise, clipped perturbations and weights, weight decay, an
    # exponential learning rate schedule and several independently trained policies.
    config = dataclasses.replace(
        SMALL,
        iterations=20,
        checkpoint_interval=20,
        noise="uniform_scaled",
        perturbed_weight_clip=0.05,
        weight_clip=0.1,
        weight_decay=1e-2,
        policy_lr_schedule="exponential",
        policy_lr_end=1e-5,
        multiple_policies=True,
    )
    env = NaNRewardCartpole(horizon=100)
    trainer, state = nfn_rl.train(config, env, seed=SEED, out_dir=tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.csv")
    nonfinite = sum(r["nonfinite_returns"] for r in rows)
    assert 0 < nonfinite < config.iterations * config.num_envs
    assert int(state.buffer.size) == config.iterations * config.num_envs - nonfinite
    assert np.all(np.isfinite(_returns(state.buffer)))
    for leaf in jax.tree.leaves(eqx.filter((state.policy, state.critic), eqx.is_array)):
        assert np.all(np.isfinite(leaf))
    assert all(math.isfinite(r["return_mean"]) for r in rows if r["nonfinite_returns"] < 8)
    # The exponential schedule runs from policy_lr to policy_lr_end over the iterations.
    np.testing.assert_allclose(rows[0]["policy_lr"], config.policy_lr, rtol=1e-5)
    np.testing.assert_allclose(rows[-1]["policy_lr"], config.policy_lr_end, rtol=1e-4)
    last_lr = state.policy_opt_state.inner_state.hyperparams["learning_rate"]
    np.testing.assert_allclose(last_lr, config.policy_lr_end, rtol=1e-4)
    # One trained policy per environment, all inside the weight clip and all different.
    flats = np.stack([nfn_rl.flat_params(trainer.policy(state, i)) for i in range(8)])
    assert np.abs(flats).max() <= 0.1
    assert len({row.tobytes() for row in flats}) == 8


def test_nonfinite_updates_are_skipped():
    trainer = nfn_rl.make_trainer(dataclasses.replace(SMALL, critic_steps=3, policy_steps=2))
    state = trainer.init(jax.random.key(0))
    params = jax.tree.map(lambda x: jnp.repeat(x, 4, axis=0), state.policy)
    buffer = state.buffer.insert((params, jnp.array([1.0, jnp.nan, 2.0, 3.0])))
    state = dataclasses.replace(state, buffer=buffer)
    skipped = nfn_rl.run.skipped_steps
    # Every batch holds the NaN entry: the buffer has only 4 entries and batches take 16.
    updated, loss = eqx.filter_jit(lambda t, s: t.critic_update(s, key=jax.random.key(0)))(
        trainer, state
    )
    assert int(skipped(updated.critic_opt_state)) == 3 and math.isnan(float(loss))
    for a, b in zip(jax.tree.leaves(state.critic), jax.tree.leaves(updated.critic), strict=True):
        np.testing.assert_array_equal(a, b)
    # A critic with a NaN weight gives NaN policy gradients: the policy must not move.
    poisoned = dataclasses.replace(
        state, critic=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.critic)
    )
    moved = eqx.filter_jit(lambda t, s: t.policy_update(s))(trainer, poisoned)
    assert int(skipped(moved.policy_opt_state)) == 2
    for a, b in zip(jax.tree.leaves(state.policy), jax.tree.leaves(moved.policy), strict=True):
        np.testing.assert_array_equal(a, b)


# --- standardised critic targets --------------------------------------------------------------


def test_standardize_valid_entries_and_ties():
    from nfn_rl.population import standardize

    values = jnp.array([1.0, 2.0, 3.0, 100.0, 4.0])
    valid = jnp.array([True, True, True, False, True])
    out = np.asarray(standardize(values, valid))
    kept = out[np.asarray(valid)]
    np.testing.assert_allclose(kept.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(kept.std(), 1.0, rtol=1e-6)
    assert out[3] == 100.0
    # Equal values (up to rounding of their mean) standardise to 0, not to rounding noise.
    same = jnp.full(5, 1.0e-5 / 3.0)
    np.testing.assert_array_equal(standardize(same, jnp.ones(5, bool)), np.zeros(5))


def _critic_after_update(config, returns):
    trainer = nfn_rl.make_trainer(config)
    state = trainer.init(jax.random.key(0))
    population = nfn_rl.perturb_population(
        trainer.policy(state), 16, key=jax.random.key(1), scale=0.3
    )
    params = eqx.filter(population, eqx.is_array)
    state = dataclasses.replace(state, buffer=state.buffer.insert((params, returns)))
    updated, _ = eqx.filter_jit(lambda t, s: t.critic_update(s, key=jax.random.key(2)))(
        trainer, state
    )
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(updated.critic)])


def test_standardized_returns_make_the_critic_fit_any_return_scale():
    config = dataclasses.replace(SMALL, critic_steps=3, critic_targets="standardized")
    returns = jax.random.uniform(jax.random.key(3), (16,))
    # An affine change of the returns (here to the 1e-5 scale of a still position Ant) leaves
    # the critic's update unchanged with standardised targets (to float32 rounding of the
    # targets, which Adam's normalisation amplifies to 6e-6 in one weight of 13,473 here), and
    # changes it by Adam's step size (1e-3) without them.
    tiny = 1e-5 * returns + 3e-5
    same = _critic_after_update(config, returns) - _critic_after_update(config, tiny)
    assert np.abs(same).max() < 2e-5
    raw = dataclasses.replace(config, critic_targets="returns")
    moved = _critic_after_update(raw, returns) - _critic_after_update(raw, tiny)
    assert np.abs(moved).max() > 1e-3
