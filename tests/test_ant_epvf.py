"""The main job end to end at the `smoke` preset: train, record a run, evaluate it."""

import csv
import dataclasses
import json
import math

import pytest
from example_runner import run_example

import nfn_rl


def _run(*args: str) -> str:
    return run_example("ant_epvf_unf.py", *args)


def test_smoke_preset_runs_end_to_end_and_evaluates(tmp_path):
    out = tmp_path / "run"
    stdout = _run("--preset", "smoke", "--out", str(out), "--no-progress")
    for name in ("config.json", "metrics.csv", "checkpoint.eqx", "returns.png", "episode.gif"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    config = json.loads((out / "config.json").read_text())
    smoke = nfn_rl.ant_config("smoke")
    assert config["critic"] == "unf+params" and config["env"] == "ant"
    assert config["noise"] == "uniform_scaled" and config["weight_clip"] == 0.1
    assert config["num_envs"] == config["batch_size"] == config["buffer_size"] == smoke.num_envs

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == list(range(smoke.iterations))
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] <= smoke.iterations * smoke.num_envs * 32
    assert all(math.isfinite(float(r["return_mean"])) for r in rows)
    assert all(math.isfinite(float(r["critic_loss"])) for r in rows)
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"] != "nan"]
    assert evals and all(0.0 <= e <= smoke.horizon for e in evals)

    last = stdout.strip().splitlines()[-1]
    assert last.startswith("seed 0: eval return ") and f"of {smoke.horizon} (" in last
    assert f"after {steps[-1]:,} env steps" in last

    # Loading the checkpoint and evaluating its policy is one command, and it agrees.
    evaluated = _run("--evaluate", "--out", str(out)).strip().splitlines()[-1]
    assert evaluated.split(";")[0] == last.split(";")[0]


def test_unknown_preset_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        nfn_rl.ant_config("huge")
    with pytest.raises(ValueError, match="unknown ablation"):
        nfn_rl.ant_config("smoke", ablation="nope")


def test_every_ablation_is_one_valid_change_of_the_best_setup():
    best = nfn_rl.ant_config("paper")
    for name in nfn_rl.ABLATIONS:
        config = nfn_rl.ant_config("paper", ablation=name)
        changed = {k for k, v in vars(config).items() if vars(best)[k] != v}
        assert bool(changed) == (name != "best"), name
    assert nfn_rl.ant_config("paper", ablation="buffer_100x").buffer_size == 409_600
    assert best.num_envs == best.batch_size == best.buffer_size == 4096 and best.horizon == 1000


def test_backend_chooses_the_ant_simulator():
    import jax

    smoke = nfn_rl.ant_config("smoke")
    assert smoke.backend == "auto"
    # "auto" is MuJoCo's C engine on one CPU device (per process), MJX elsewhere.
    one_cpu = jax.default_backend() == "cpu" and len(jax.local_devices()) == 1
    auto = nfn_rl.make_trainer(smoke).env
    assert isinstance(auto, nfn_rl.envs.NativeAnt) == one_cpu
    mjx = nfn_rl.make_trainer(dataclasses.replace(smoke, backend="mjx")).env
    assert type(mjx) is nfn_rl.envs.Ant
    with pytest.raises(ValueError, match=r"EPVFConfig\.backend: 'native' simulates the Ant only"):
        nfn_rl.make_trainer(nfn_rl.EPVFConfig(backend="native"))
    with pytest.raises(ValueError, match=r"EPVFConfig\.backend"):
        nfn_rl.EPVFConfig(backend="warp")


def test_native_rollouts_inside_the_trainer_equal_the_host_rollout():
    """The trainer's jitted collect step (one host callback for the batch) returns what
    `NativeAntRollout` returns for the same perturbed policies."""
    import equinox as eqx
    import jax
    import numpy as np

    trainer = nfn_rl.make_trainer(nfn_rl.ant_config("smoke"))
    state = trainer.init(jax.random.key(0))
    collect = eqx.filter_jit(lambda t, s, k: t.collect(s.policy, key=k))
    population = collect(trainer, state, jax.random.key(1))
    candidates, lengths, returns = population.params, population.lengths, population.returns
    with trainer.env.rollout() as rollout:
        host_lengths, host_returns = rollout.episode_lengths_and_returns(
            candidates, trainer.policy_static
        )
    np.testing.assert_array_equal(lengths, host_lengths)
    np.testing.assert_array_equal(returns, host_returns)


def test_the_run_records_its_simulator_and_a_resume_on_the_other_is_refused(tmp_path, monkeypatch):
    """`backend="auto"` used to be recorded as "auto" and chosen again on each machine, so that a
    GPU run resumed on a CPU went on in the other simulator without a word."""
    import json

    import jax
    from test_multidevice import NATIVE_CONFIG

    from nfn_rl.run import CheckpointError, load_checkpoint, read_header

    config = nfn_rl.EPVFConfig(**{**NATIVE_CONFIG, "backend": "auto"})
    assert config.backend == "auto"
    chosen = nfn_rl.make_trainer(config).config.backend
    # `auto` chooses by the machine; the same choice is made again below on "this" machine.
    assert chosen == ("native" if jax.default_backend() == "cpu" else "mjx")
    nfn_rl.train(config, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["backend"] == chosen
    assert read_header(tmp_path / "checkpoint.eqx")["config"]["backend"] == chosen

    other = "mjx" if chosen == "native" else "native"
    with pytest.raises(CheckpointError) as error:
        nfn_rl.train(dataclasses.replace(config, backend=other), out_dir=tmp_path, resume=True)
    message = str(error.value)
    assert f"trained on the {chosen!r} backend" in message and f"with {other!r}" in message
    assert "allow_backend_change=True" in message and "\n" not in message
    # The same run resumed on a machine where "auto" chooses the other simulator.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu" if chosen == "native" else "cpu")
    elsewhere = nfn_rl.make_trainer(config)
    assert elsewhere.config.backend == other
    with pytest.raises(CheckpointError, match=f"trained on the {chosen!r} backend"):
        load_checkpoint(tmp_path / "checkpoint.eqx", elsewhere)
    # Asked for explicitly, it loads.
    state, header = load_checkpoint(
        tmp_path / "checkpoint.eqx", elsewhere, allow_backend_change=True
    )
    assert int(state.iteration) == header["iteration"] == config.iterations
