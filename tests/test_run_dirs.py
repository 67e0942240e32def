"""Run directories: one run per directory, rows that belong to their run, checkpoints that
prove their integrity, an `--evaluate` that trusts only the checkpoint, and kills at random
points that resume into the uninterrupted run. Each case failed before its fix."""

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from example_runner import ROOT
from short_runs import SMALL_NETWORKS, cadence

import nfn_rl
from nfn_rl import baselines
from nfn_rl.run import METRIC_COLUMNS, read_metrics

CONFIG = nfn_rl.EPVFConfig(
    horizon=60,
    num_envs=8,
    batch_size=8,
    iterations=12,
    **cadence(log=3, checkpoint=6, episodes=2),
    **SMALL_NETWORKS,
)


def _train(out, seed=0, **kwargs):
    return nfn_rl.train(CONFIG, seed=seed, out_dir=out, progress=False, **kwargs)


def _without_wall(rows):
    """Rows without the two columns that differ between runs: time and run id."""
    return [{k: v for k, v in r.items() if k not in ("wall_s", "run_id")} for r in rows]


def _assert_same(rows_a, rows_b):
    assert len(rows_a) == len(rows_b) > 0
    for a, b in zip(_without_wall(rows_a), _without_wall(rows_b), strict=True):
        for k in a:
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a, b)


def _payload(path):
    return path.read_bytes().split(b"\n", 1)[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run of seed 0 and one of seed 1, to compare against (read only)."""
    root = tmp_path_factory.mktemp("finished")
    _train(root / "seed0")
    _train(root / "seed1", seed=1)
    return root


def _copy(run, to):
    shutil.copytree(run, to)
    return to


# --- one run per directory -------------------------------------------------------------------


def test_a_fresh_run_refuses_a_directory_that_holds_a_run(finished, tmp_path):
    out = _copy(finished / "seed0", tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="holds a run already.*--resume.*--overwrite"):
        _train(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_moves_the_whole_old_run_aside(finished, tmp_path):
    out = _copy(finished / "seed1", tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _train(out, overwrite=True)
    (aside,) = out.glob("replaced_*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before
    _assert_same(read_metrics(out / "metrics.csv"), read_metrics(finished / "seed0/metrics.csv"))
    with pytest.raises(ValueError, match="exclude each other"):
        _train(out, resume=True, overwrite=True)


def _interrupted_at_first_checkpoint(out):
    """A run of seed 0 stopped right after its first checkpoint."""

    def stop(iteration):
        if iteration == CONFIG.checkpoint_interval:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(out, on_chunk=stop)
    return out


def test_every_row_names_its_run_and_resume_keeps_only_that_runs_rows(finished, tmp_path):
    """A seed-1 run's rows left in a seed-0 directory (and a row past the checkpoint) are
    dropped: the resumed run's rows are exactly the uninterrupted seed-0 run's."""
    out = _interrupted_at_first_checkpoint(tmp_path / "run")
    ids = {r["run_id"] for r in read_metrics(out / "metrics.csv")}
    assert len(ids) == 1 and ids != {
        r["run_id"] for r in read_metrics(finished / "seed1/metrics.csv")
    }
    foreign = (finished / "seed1/metrics.csv").read_text().splitlines(keepends=True)[1:]
    with (out / "metrics.csv").open("a") as f:
        f.writelines(foreign)
    _train(out, resume=True)
    _assert_same(read_metrics(out / "metrics.csv"), read_metrics(finished / "seed0/metrics.csv"))
    assert _payload(out / "checkpoint.eqx") == _payload(finished / "seed0/checkpoint.eqx")


def test_lost_rows_are_rebuilt_by_replaying_the_run(finished, tmp_path):
    out = _interrupted_at_first_checkpoint(tmp_path / "run")
    (out / "metrics.csv").unlink()
    _train(out, resume=True)
    rows = read_metrics(out / "metrics.csv")
    _assert_same(rows, read_metrics(finished / "seed0/metrics.csv"))
    walls = [r["wall_s"] for r in rows]
    assert all(math.isnan(w) for w in walls[: CONFIG.checkpoint_interval])
    assert all(math.isfinite(w) for w in walls[CONFIG.checkpoint_interval :])


def test_a_finished_run_resumed_is_a_no_op_that_restores_a_half_written_row(finished, tmp_path):
    out = _copy(finished / "seed0", tmp_path / "run")
    checkpoint = (out / "checkpoint.eqx").read_bytes()
    text = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(text[: text.rindex(",")])  # the last row cut short
    _, state = _train(out, resume=True)
    assert int(state.iteration) == CONFIG.iterations
    assert (out / "checkpoint.eqx").read_bytes() == checkpoint
    _assert_same(read_metrics(out / "metrics.csv"), read_metrics(finished / "seed0/metrics.csv"))
    assert (
        read_metrics(out / "metrics.csv")[-1]["env_steps"]
        == json.loads(checkpoint.split(b"\n", 1)[0])["env_steps"]
    )


# --- checkpoints prove themselves ------------------------------------------------------------


def _rewrite(path, header=None, payload=None):
    line, rest = path.read_bytes().split(b"\n", 1)
    header = header if header is not None else json.loads(line)
    path.write_bytes(json.dumps(header).encode() + b"\n" + (rest if payload is None else payload))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip", "does not match its sha256"),
        ("trailing", "followed by unexpected bytes"),
        ("truncate", "truncated"),
        ("iteration", "the state is at iteration 12, the header says 6"),
    ],
)
def test_damaged_checkpoints_are_refused_naming_the_file(finished, tmp_path, damage, message):
    out = _copy(finished / "seed0", tmp_path / "run")
    path = out / "checkpoint.eqx"
    payload = _payload(path)
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    if damage == "flip":
        _rewrite(path, payload=payload[:-100] + bytes([payload[-100] ^ 1]) + payload[-99:])
    elif damage == "trailing":
        _rewrite(path, payload=payload + b"\0")
    elif damage == "truncate":
        _rewrite(path, payload=payload[:-10])
    else:
        _rewrite(path, header=header | {"iteration": 6})
    with pytest.raises(ValueError, match=message) as error:
        nfn_rl.load_run(out)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match=message):
        _train(out, resume=True)


def test_the_header_checksum_covers_the_payload(finished):
    path = finished / "seed0/checkpoint.eqx"
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["payload_sha256"] == hashlib.sha256(_payload(path)).hexdigest()
    assert {"config", "seed", "run_id", "iteration", "env_steps"} <= set(header)


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="names fds by /proc")
def test_checkpoints_reach_the_disk_before_and_after_the_rename(finished, tmp_path, monkeypatch):
    """fsync the new file, rename it over the old one, fsync the directory: a power loss at any
    point leaves a checkpoint that loads (before the fix the file was renamed unsynced, and could
    be empty after a crash while the old one was gone)."""
    from nfn_rl.run._checkpoint import save_checkpoint

    out = _copy(finished / "seed0", tmp_path / "run").resolve()
    path = out / "checkpoint.eqx"
    trainer, state, header = nfn_rl.load_run(out)
    header = {k: header[k] for k in header if not k.startswith(("format", "payload"))}
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(path, state, header)
    tmp = str(path) + ".tmp"
    assert events == [("fsync", tmp), ("replace", tmp, str(path)), ("fsync", str(out))]

    # A crash after the new file was written, before the rename: the old checkpoint loads.
    def crash(source, target):
        raise OSError("power loss")

    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power loss"):
        save_checkpoint(path, state, header | {"iteration": 99})
    assert path.read_bytes() == before
    monkeypatch.undo()
    _, loaded, _ = nfn_rl.load_run(out)
    assert all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state), strict=True)
    )


def test_resuming_a_run_of_another_algorithm_says_so(tmp_path):
    ppo = baselines.PPOConfig(env="cartpole", horizon=20, num_envs=4, unroll_length=4)
    ppo = dataclasses.replace(ppo, iterations=2, log_interval=2, checkpoint_interval=2)
    nfn_rl.train(ppo, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a 'ppo' run, not a 'epvf' run: the algorithms"):
        _train(tmp_path, resume=True)


# --- numbers that say what they mean --------------------------------------------------------


def test_an_empty_buffer_reports_a_nan_critic_loss():
    trainer = nfn_rl.make_trainer(CONFIG)
    state = trainer.init(jax.random.key(0))
    _, loss = eqx.filter_jit(lambda t, s: t.critic_update(s, key=jax.random.key(1)))(trainer, state)
    assert math.isnan(float(loss))


def test_evaluated_column_marks_evaluations(finished):
    rows = read_metrics(finished / "seed0/metrics.csv")
    assert [r["iteration"] for r in rows if r["evaluated"]] == [2, 5, 8, 11]
    assert all(math.isnan(r["eval_return"]) for r in rows if not r["evaluated"])


class NaNCritic(nfn_rl.FlatCritic):
    """A critic whose every prediction is NaN: every critic step is skipped."""

    def __call__(self, policy):
        return super().__call__(policy) * jnp.nan


def test_a_critic_that_never_steps_is_reported_once(tmp_path):
    if "nan-for-tests" not in nfn_rl.critic_names():
        nfn_rl.register_critic("nan-for-tests", NaNCritic)
    config = dataclasses.replace(CONFIG, critic="nan-for-tests")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nfn_rl.train(config, out_dir=tmp_path, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert sum("critic step" in m for m in messages) == 1, messages


def test_a_batch_larger_than_every_pair_the_run_collects_is_refused():
    with pytest.raises(ValueError, match=r"EPVFConfig\.batch_size: .*96 \(policy, return\)"):
        dataclasses.replace(CONFIG, batch_size=100, buffer_size=1000)


# --- the command line ------------------------------------------------------------------------


def _example(script, *args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_errors_name_the_field_or_file_without_a_traceback_unless_debug(finished, tmp_path):
    # A bad value: the command line's parser names the field.
    result = _example("ant_epvf_unf.py", "--preset", "smoke", "--config.num-envs", "0")
    assert result.returncode != 0
    assert "EPVFConfig.num_envs: must be an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr
    # A directory that holds a run: one line naming it.
    out = _copy(finished / "seed0", tmp_path / "run")
    flags = [f"--config.{k.replace('_', '-')}={v}" for k, v in _changed_fields().items()]
    result = _example("cartpole_epvf.py", *flags, "--out", str(out), "--no-progress")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out} holds a run already"), result.stderr[-2000:]
    result = _example("cartpole_epvf.py", *flags, "--out", str(out), "--no-progress", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def _changed_fields():
    default = nfn_rl.EPVFConfig()
    return {
        f.name: getattr(CONFIG, f.name)
        for f in dataclasses.fields(CONFIG)
        if getattr(CONFIG, f.name) != getattr(default, f.name)
    }


def test_evaluate_refuses_overrides_and_trusts_only_the_checkpoint(finished, tmp_path):
    result = _example("ant_epvf_unf.py", "--evaluate", "--critic", "flat", "--out", str(tmp_path))
    assert result.returncode != 0
    assert "--critic does not apply under --evaluate" in result.stderr
    # A PPO directory evaluates through the EPVF script, from the checkpoint alone, with the
    # checkpoint's env steps even after its metrics and config.json are gone.
    ppo = baselines.PPOConfig(env="cartpole", horizon=20, num_envs=4, unroll_length=4)
    ppo = dataclasses.replace(ppo, iterations=2, log_interval=2, checkpoint_interval=2)
    nfn_rl.train(ppo, out_dir=tmp_path / "ppo", progress=False)
    (tmp_path / "ppo/metrics.csv").unlink()
    (tmp_path / "ppo/config.json").unlink()
    result = _example("ant_epvf_unf.py", "--evaluate", "--out", str(tmp_path / "ppo"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after 32 env steps (iteration 2 of 2)" in result.stdout


# --- random kills ----------------------------------------------------------------------------

KILL_FLAGS = [
    "--config.horizon=60",
    "--config.num-envs=8",
    "--config.batch-size=8",
    "--config.iterations=24",
    "--config.log-interval=2",
    "--config.eval-interval=4",
    "--config.eval-episodes=2",
    "--config.checkpoint-interval=2",
    "--config.policy-width=8",
    "--config.critic-width=16",
    "--no-progress",
]


def _last_iteration(metrics) -> int:
    """The iteration of the last complete row of `metrics.csv` (-1 if none)."""
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return -1
    complete = [line for line in lines[1:] if line.count(",") == len(METRIC_COLUMNS) - 1]
    return int(complete[-1].split(",")[1]) if complete else -1


def test_random_kills_then_resume_give_the_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random points of the run (after a random iteration's row, plus a
    random delay of up to 5 ms, so some kills land in a write), resume after each, until the
    run finishes: its metrics (all but wall_s) and final state are those of the uninterrupted
    run."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache/nfn/jax"))
    whole = tmp_path / "whole"
    result = _example("cartpole_epvf.py", *KILL_FLAGS, "--out", str(whole), env=env)
    assert result.returncode == 0, result.stderr[-2000:]

    rng = random.Random(7)
    cut = tmp_path / "cut"
    iterations = 24
    kills = 0
    for _ in range(8):
        resume = (cut / "checkpoint.eqx").is_file()
        done = (
            json.loads((cut / "checkpoint.eqx").read_bytes().split(b"\n", 1)[0])["iteration"]
            if resume
            else 0
        )
        args = [sys.executable, str(ROOT / "examples/cartpole_epvf.py"), *KILL_FLAGS]
        process = subprocess.Popen(
            [*args, "--out", str(cut), "--resume" if resume else "--overwrite"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        if kills < 3 and done <= iterations - 4:
            target = rng.randint(done, iterations - 4)
            deadline = time.monotonic() + 240
            while process.poll() is None and time.monotonic() < deadline:
                if _last_iteration(cut / "metrics.csv") >= target:
                    time.sleep(rng.uniform(0.0, 0.005))
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.002)
        _, stderr = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    # A chunk takes milliseconds, so a kill may land after the final checkpoint: then the
    # resume finds a finished run.
    assert process.returncode == 0 and kills >= 1
    _assert_same(read_metrics(whole / "metrics.csv"), read_metrics(cut / "metrics.csv"))
    assert _payload(cut / "checkpoint.eqx") == _payload(whole / "checkpoint.eqx")
