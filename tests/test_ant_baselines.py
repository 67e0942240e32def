"""`examples/ant_baselines.py` end to end at the `smoke` preset, for PPO, SAC and ES."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from example_runner import ROOT, run_example

import nfn_rl
from nfn_rl.run import METRIC_COLUMNS


def _run(*args: str) -> str:
    return run_example("ant_baselines.py", *args)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_smoke_preset_runs_end_to_end_and_evaluates(tmp_path, algo):
    out = tmp_path / algo
    stdout = _run("--algo", algo, "--preset", "smoke", "--out", str(out), "--no-progress")
    for name in ("config.json", "metrics.csv", "checkpoint.eqx", "returns.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == algo and config["env"] == "ant" and config["horizon"] == 32

    with (out / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METRIC_COLUMNS
        rows = list(reader)
    assert [int(r["iteration"]) for r in rows] == list(range(config["iterations"]))
    per_iteration = config["num_envs"] * config["unroll_length"]
    assert [int(r["env_steps"]) for r in rows] == [
        per_iteration * (i + 1) for i in range(len(rows))
    ]
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"] != "nan"]
    assert len(evals) == config["iterations"] // config["eval_interval"]
    assert all(0.0 <= e <= config["horizon"] for e in evals)
    losses = [float(r["critic_loss"]) for r in rows]
    assert any(math.isfinite(v) for v in losses)

    last = stdout.strip().splitlines()[-1]
    assert last.startswith("seed 0: eval return ")
    assert f"after {int(rows[-1]['env_steps']):,} env steps" in last
    if algo == "ppo":
        # The evaluate path is the same for both algorithms (SAC's checkpoint round trip is
        # tested in test_baselines.py); one more Ant compile is spared.
        evaluated = _run("--evaluate", "--out", str(out)).strip().splitlines()[-1]
        assert evaluated.split(";")[0] == last.split(";")[0]


def test_es_smoke_preset_writes_a_run_directory_on_the_epvf_population(tmp_path):
    out = tmp_path / "es"
    stdout = _run("--algo", "es", "--preset", "smoke", "--out", str(out), "--no-progress")
    for name in ("config.json", "metrics.csv", "checkpoint.eqx", "returns.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    epvf = nfn_rl.ant_config("smoke")
    # The population EPVF's smoke preset rolls out, in antithetic pairs.
    for name in (
        "env",
        "horizon",
        "num_envs",
        "noise",
        "noise_scale",
        "weight_clip",
        "policy_width",
    ):
        assert config[name] == getattr(epvf, name), name
    assert config["algo"] == "es" and config["antithetic"]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == config["iterations"]
    assert all(
        0 < int(r["env_steps"]) - int(p["env_steps"]) <= 16 * 32 for p, r in zip(rows, rows[1:])
    )
    # No critic: its columns are NaN.
    assert {r["critic_loss"] for r in rows} == {"nan"} and {
        r["critic_es_cosine"] for r in rows
    } == {"nan"}
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("seed 0: eval return ") and " ± " in last and "16 perturbations" in last


def _fake_run(path: Path, config: dict, evals: list[float]) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    with (path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for i, value in enumerate(evals):
            row = dict.fromkeys(METRIC_COLUMNS, 0)
            row |= {"iteration": i, "env_steps": 100 * (i + 1), "wall_s": 1.0 * (i + 1)}
            writer.writerow(row | {"eval_return": value, "return_mean": value})


def test_compare_groups_seeds_per_method_and_refuses_mixed_tasks(tmp_path):
    epvf = {"env": "ant", "horizon": 32, "critic": "flat", "num_envs": 16}
    for seed in range(2):
        _fake_run(tmp_path / "epvf" / f"seed{seed}", epvf | {"seed": seed}, [0.0, 1.0, 2.0])
    ppo = {"algo": "ppo", "env": "ant", "horizon": 32, "num_envs": 16, "seed": 0}
    _fake_run(tmp_path / "ppo" / "seed0", ppo, [0.5, 1.5])
    script = str(ROOT / "examples/compare_ant.py")
    figure = tmp_path / "compare.png"
    result = subprocess.run(
        [sys.executable, script, str(tmp_path), "--out", str(figure)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EPVF flat: 2 run(s)" in result.stdout and "PPO: 1 run(s)" in result.stdout
    assert figure.is_file() and figure.stat().st_size > 10_000

    _fake_run(tmp_path / "other" / "seed0", epvf | {"seed": 0, "horizon": 64}, [1.0])
    result = subprocess.run(
        [sys.executable, script, str(tmp_path), "--out", str(figure)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "different environments or horizons" in result.stderr
