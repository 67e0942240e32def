"""The one trainer design: the package's layers, seeds as data, the shared guards and buffer, the
pure PPO/SAC losses, and the review's correctness fixes (each test failed before its fix)."""

import ast
import dataclasses
import json
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from example_runner import run_example
from short_runs import cadence

import nfn_rl
from nfn_rl import baselines
from nfn_rl.envs import Cartpole
from nfn_rl.run import return_statistics, skip_nonfinite, skipped_steps

PACKAGE = pathlib.Path(nfn_rl.__file__).parent

# --- layout ----------------------------------------------------------------------------------

# What each layer may import from the package: envs at the bottom, run above it, population
# (what learning from perturbed policies shares) above that, and epvf and baselines side by side
# on top.
ALLOWED = {
    "envs": {"envs"},
    "run": {"envs", "run"},
    "population": {"envs", "run", "population"},
    "epvf": {"envs", "run", "population", "epvf"},
    "baselines": {"envs", "run", "population", "baselines"},
}


def _package_imports(path: pathlib.Path) -> set[str]:
    """The `nfn_rl` subpackages a module imports (`nfn_rl.x...` -> `x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nfn_rl":
                found.add(parts[1] if len(parts) > 1 else "<top>")
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_from_below(layer):
    for module in sorted((PACKAGE / layer).rglob("*.py")):
        imported = _package_imports(module)
        assert imported <= ALLOWED[layer], (module.name, imported - ALLOWED[layer])


def test_package_has_only_the_four_layers_the_entry_point_and_the_launcher():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == {"__init__.py", "_api.py", "launch.py"}
    # The launcher starts processes and never JAX: it imports nothing of the package.
    assert _package_imports(PACKAGE / "launch.py") == set()
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        ALLOWED
    )


# --- seeds as data ---------------------------------------------------------------------------

CARTPOLE = nfn_rl.EPVFConfig(
    horizon=100,
    num_envs=8,
    batch_size=8,
    iterations=20,
    **cadence(log=10, evaluate=5, episodes=2, checkpoint=20),
    policy_width=16,
    critic_width=32,
)


def _rows_without_wall(path):
    rows = nfn_rl.read_metrics(path)
    return [{k: v for k, v in row.items() if k not in ("wall_s", "run_id")} for row in rows]


def _assert_same_rows(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])), (k, x, y)


def test_seeds_flag_of_the_cartpole_example_equals_single_seed_runs(tmp_path):
    """`--seeds 2` trains seeds 0 and 1 in one program; each seed's metrics and final state are
    bitwise those of a single-seed run of that seed."""
    flags = [
        f"--config.{field.name.replace('_', '-')}={getattr(CARTPOLE, field.name)}"
        for field in dataclasses.fields(CARTPOLE)
        if getattr(CARTPOLE, field.name) != field.default
    ]
    run_example("cartpole_epvf.py", *flags, "--seeds", "2", "--out", str(tmp_path / "two"))
    for seed in range(2):
        single = tmp_path / f"single{seed}"
        nfn_rl.train(CARTPOLE, seed=seed, out_dir=single, progress=False)
        _assert_same_rows(
            _rows_without_wall(single / "metrics.csv"),
            _rows_without_wall(tmp_path / "two" / f"seed_{seed}" / "metrics.csv"),
        )
        a = (single / "checkpoint.eqx").read_bytes().split(b"\n", 1)[1]
        b = (tmp_path / "two" / f"seed_{seed}" / "checkpoint.eqx").read_bytes()
        assert a == b.split(b"\n", 1)[1], f"seed {seed}: states differ"


def test_seeds_are_checked():
    trainer = nfn_rl.make_trainer(CARTPOLE)
    for seeds, message in [((), "at least one"), ((1, 1), "distinct"), ((-1,), ">= 0")]:
        with pytest.raises(ValueError, match=message):
            nfn_rl.run.run_training(
                trainer, seeds=seeds, out_dir="unused", resume=False, progress=False, desc=""
            )


# --- shared guard, buffer and statistics -----------------------------------------------------


def test_nonfinite_guard_works_on_trees_without_float_leaves():
    """Defect 12: the old guard stacked an empty list for a tree without float leaves."""
    optimizer = skip_nonfinite(optax.adam(1e-3))
    state = optimizer.init({})
    _, state = optimizer.update({}, state, {})
    assert int(skipped_steps(state)) == 0
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    updates, state = optimizer.update({"w": jnp.array([1.0, jnp.nan])}, state, params)
    assert int(skipped_steps(state)) == 1
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], params["w"])


def test_return_statistics_are_nan_when_no_return_is_finite():
    """Defect 8: EPVF logged return_max = -inf where the baselines logged NaN."""
    stats = return_statistics(jnp.array([jnp.nan, jnp.inf]), jnp.array([True, True]))
    assert math.isnan(float(stats["return_mean"])) and math.isnan(float(stats["return_max"]))
    assert int(stats["nonfinite_returns"]) == 2
    stats = return_statistics(jnp.array([1.0, jnp.nan, 3.0]), jnp.array([True, True, False]))
    assert (float(stats["return_mean"]), float(stats["return_max"])) == (1.0, 1.0)
    assert int(stats["nonfinite_returns"]) == 1


def test_epvf_logs_nan_when_every_return_is_nonfinite():
    class NaNCartpole(Cartpole):
        def step(self, state, action):
            nan = jnp.full((), jnp.nan)
            return dataclasses.replace(super().step(state, action), reward=nan)

    trainer = nfn_rl.make_trainer(CARTPOLE, NaNCartpole(horizon=100))
    state = trainer.init(jax.random.key(0))
    _, metrics = eqx.filter_jit(lambda t, s: t.update(s, jax.random.key(1)))(trainer, state)
    assert math.isnan(float(metrics["return_max"])) and math.isnan(float(metrics["return_mean"]))
    assert int(metrics["nonfinite_returns"]) == CARTPOLE.num_envs


def test_plot_returns_keeps_the_matplotlib_backend(tmp_path):
    """Defect 9: `matplotlib.use("Agg")` on every run switched a notebook's backend."""
    from nfn_rl.run._report import plot_returns

    before = matplotlib.get_backend()
    matplotlib.rcParams["backend"] = "svg"
    try:
        rows = [
            {"env_steps": i, "wall_s": float(i), "return_mean": 1.0, "eval_return": 2.0}
            for i in range(3)
        ]
        plot_returns(rows, tmp_path / "returns.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "returns.png").stat().st_size > 1000
    finally:
        matplotlib.rcParams["backend"] = before


# --- EPVF fixes ------------------------------------------------------------------------------


def test_initial_policy_is_clipped_when_weight_clip_is_set():
    """Defect 3: Equinox's initial weights reach about 0.17, above the recipe's 0.1 clip."""
    config = dataclasses.replace(CARTPOLE, weight_clip=0.1)
    state = nfn_rl.make_trainer(config).init(jax.random.key(0))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(state.policy)) <= np.float32(0.1)
    unclipped = nfn_rl.make_trainer(CARTPOLE).init(jax.random.key(0))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(unclipped.policy)) > 0.1


def test_clip_perturbations_ablation_clips_the_rolled_out_policies():
    """Defect 1: clipping the noise U(-0.3|w|, 0.3|w|) to 0.3 is a no-op unless |w| > 1, so the
    ablation was the same run as no_weight_clip. It now clips the perturbed parameters."""
    clip_config = nfn_rl.ant_config("smoke", ablation="clip_perturbations")
    plain_config = nfn_rl.ant_config("smoke", ablation="no_weight_clip")
    assert clip_config.weight_clip is None and clip_config.perturbed_weight_clip == 0.3
    policy = nfn_rl.make_policy(Cartpole(), 16, 2, key=jax.random.key(0))
    # Large weights, as an unclipped policy can reach.
    policy = jax.tree.map(lambda x: 3 * x if eqx.is_array(x) else x, policy)
    population = {}
    for name, config in [("clip", clip_config), ("plain", plain_config)]:
        population[name] = nfn_rl.perturb_population(
            policy,
            4,
            key=jax.random.key(1),
            noise=config.noise,
            scale=config.noise_scale,
            weight_clip=config.perturbed_weight_clip,
        )
    clipped = nfn_rl.flat_params(population["clip"])
    plain = nfn_rl.flat_params(population["plain"])
    assert float(jnp.abs(clipped).max()) <= np.float32(0.3)
    assert float(jnp.abs(plain).max()) > 0.3
    assert not np.array_equal(clipped, plain)


def test_probing_states_start_at_the_observation_scale():
    """Defect 5: probing states were U[0, 1), which suits normalised observations only. The
    native Ant's statistics (MuJoCo's C engine) spare an MJX compile."""
    env = nfn_rl.envs.NativeAnt("torque", 20)
    mean, std = nfn_rl.observation_statistics(env, key=jax.random.key(0))
    policy = nfn_rl.make_policy(env, 8, 2, key=jax.random.key(1))
    critic = nfn_rl.make_critic(
        "probing",
        policy,
        key=jax.random.key(2),
        probing_states=400,
        observation_stats=(mean, std),
    )
    states = critic.probing_states
    np.testing.assert_allclose(states.mean(0), mean, atol=0.25 * float(std.max()))
    np.testing.assert_allclose(states.std(0), std, rtol=0.25)
    # Joint velocities under random torques span several units, far outside [0, 1).
    assert float(std.max()) > 1.0 and float(states.min()) < -1.0


def test_critic_options_are_config_fields_recorded_in_config_json(tmp_path):
    config = dataclasses.replace(
        CARTPOLE,
        critic="unf",
        unf_channels=4,
        unf_features=8,
        iterations=10,
        checkpoint_interval=10,
    )
    trainer, state = nfn_rl.train(config, out_dir=tmp_path, progress=False)
    critic = eqx.combine(state.critic, trainer.critic_static)
    assert critic.encoder is not None and critic.mlp.in_size == 8
    stored = nfn_rl.config_from_dict(nfn_rl.run.read_header(tmp_path / "checkpoint.eqx")["config"])
    assert stored == config
    with pytest.raises(ValueError, match="unf_channels"):
        nfn_rl.train(
            dataclasses.replace(config, unf_channels=8),
            out_dir=tmp_path,
            resume=True,
            progress=False,
        )


def _rewrite_header(path, change):
    header_line, _, payload = path.read_bytes().partition(b"\n")
    header = json.loads(header_line)
    change(header["config"])
    path.write_bytes((json.dumps(header) + "\n").encode() + payload)


def test_checkpoint_from_before_a_config_field_existed_loads_with_its_default(tmp_path):
    config = dataclasses.replace(CARTPOLE, iterations=10, checkpoint_interval=10)
    nfn_rl.train(config, out_dir=tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.eqx"
    # As written before `critic_targets` existed: the field is absent from the header.
    _rewrite_header(checkpoint, lambda fields: fields.pop("critic_targets"))
    trainer, state, _ = nfn_rl.load_run(tmp_path)
    assert trainer.config == config and int(state.iteration) == 10
    # A field the config no longer has is refused by name.
    _rewrite_header(checkpoint, lambda fields: fields.update(retired_option=1))
    with pytest.raises(nfn_rl.run.CheckpointError, match="retired_option"):
        nfn_rl.load_run(tmp_path)


# --- PPO and SAC losses ----------------------------------------------------------------------


def test_gae_by_hand_with_termination_and_truncation():
    """Two environments, three steps, gamma 0.5, lambda 0.5 (gamma * lambda = 0.25).

    Env 0 terminates at step 1 and restarts; env 1 is truncated at step 0 and bootstraps from
    its last observation's value there, and the unroll ends at step 2 (bootstrap from 5).
    """
    rewards = jnp.array([[1.0, 2.0], [1.0, 0.0], [1.0, 1.0]])
    values = jnp.array([[0.5, 1.0], [0.5, 1.0], [2.0, 1.0]])
    next_values = jnp.array([[0.5, 4.0], [9.0, 1.0], [3.0, 5.0]])
    terminated = jnp.array([[False, False], [True, False], [False, False]])
    done = jnp.array([[False, True], [True, False], [False, False]])
    advantages, targets = baselines.gae(
        rewards, values, next_values, terminated, done, discount=0.5, gae_lambda=0.5
    )
    # delta = r + (0 if terminated else 0.5 * next_value) - value
    # env 0: deltas 1 + 0.25 - 0.5 = 0.75; 1 + 0 - 0.5 = 0.5; 1 + 1.5 - 2 = 0.5
    #   A2 = 0.5; A1 = 0.5 (done: no carry); A0 = 0.75 + 0.25 * 0.5 = 0.875
    # env 1: deltas 2 + 2 - 1 = 3 (truncated: bootstraps); 0 + 0.5 - 1 = -0.5; 1 + 2.5 - 1 = 2.5
    #   A2 = 2.5; A1 = -0.5 + 0.25 * 2.5 = 0.125; A0 = 3 (done: no carry)
    expected = np.array([[0.875, 3.0], [0.5, 0.125], [0.5, 2.5]])
    np.testing.assert_allclose(advantages, expected, rtol=1e-6)
    np.testing.assert_allclose(targets, expected + np.asarray(values), rtol=1e-6)


def test_ppo_loss_clips_the_ratio_and_weights_its_terms():
    log_probs = jnp.log(jnp.array([2.0, 0.5]))
    advantages = jnp.array([1.0, -1.0])  # standardised: (1, -1)
    total, value_loss = baselines.ppo_loss(
        log_probs,
        jnp.zeros(2),
        advantages,
        values=jnp.array([1.0, 2.0]),
        targets=jnp.array([0.0, 0.0]),
        entropy=jnp.array([0.3, 0.5]),
        clip_epsilon=0.2,
        value_cost=0.5,
        entropy_cost=0.1,
    )
    # Ratios (2, 0.5), clipped (1.2, 0.8): min(2, 1.2) = 1.2 and min(-0.5, -0.8) = -0.8.
    policy_loss = -(1.2 - 0.8) / 2
    np.testing.assert_allclose(value_loss, 0.5 * (1 + 4) / 2, rtol=1e-6)
    np.testing.assert_allclose(total, policy_loss + 0.5 * 1.25 - 0.1 * 0.4, rtol=1e-5)


def test_sac_losses_by_hand():
    target = baselines.soft_q_target(
        jnp.array([1.0, 2.0]),
        jnp.array([False, True]),
        next_q=jnp.array([[3.0, 5.0], [4.0, 1.0]]),
        next_log_probs=jnp.array([-1.0, -2.0]),
        alpha=jnp.asarray(0.5),
        discount=0.9,
        reward_scale=2.0,
    )
    # Env 0: 2 * 1 + 0.9 * (min(3, 4) + 0.5) = 5.15; env 1 terminates: 2 * 2.
    np.testing.assert_allclose(target, [5.15, 4.0], rtol=1e-6)
    q = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    # Squared errors (0, 1) and (4, 1): summed over the two networks (4, 2), averaged, halved.
    np.testing.assert_allclose(baselines.q_loss(q, jnp.array([1.0, 1.0])), 0.5 * (4 + 2) / 2)
    np.testing.assert_allclose(
        baselines.actor_loss(q, jnp.array([-1.0, 0.0]), jnp.asarray(2.0)), ((-2 - 1) + (0 - 0)) / 2
    )
    grad = jax.grad(baselines.temperature_loss)(jnp.asarray(0.0), jnp.array([-1.0, -3.0]), -1.0)
    # d/dlog_alpha of -mean(log_alpha * (log_p - 1)) = -mean(log_p - 1) = 3.
    np.testing.assert_allclose(grad, 3.0)


def test_unf_layer_norm_is_a_config_field_of_the_unf_critics():
    policy = nfn_rl.make_policy(Cartpole(), 8, 2, key=jax.random.key(0))
    small = dict(key=jax.random.key(1), unf_channels=4, unf_features=8)
    with_norm = nfn_rl.make_critic("unf+params", policy, **small)
    without = nfn_rl.make_critic("unf+params", policy, unf_layer_norm=False, **small)
    assert with_norm.encoder.norms is not None and without.encoder.norms is None
    # The layer norm removes the policy's global weight scale; without it the value sees it.
    params, static = eqx.partition(policy, eqx.is_array)
    scaled = eqx.combine(jax.tree.map(lambda x: 3 * x, params), static)
    unf_only = dict(small, key=jax.random.key(2))
    normed = nfn_rl.make_critic("unf", policy, **unf_only)
    plain = nfn_rl.make_critic("unf", policy, unf_layer_norm=False, **unf_only)
    np.testing.assert_allclose(normed(policy), normed(scaled), rtol=1e-3)
    assert abs(float(plain(policy) - plain(scaled))) > 1e-4
    config = dataclasses.replace(CARTPOLE, critic="unf", unf_layer_norm=False)
    assert nfn_rl.EPVFConfig.from_json(config.to_json()) == config
