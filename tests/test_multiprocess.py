"""EPVF across processes (`jax.distributed`, Gloo on CPU): 2 processes with 1 device each match
1 process with 2 devices and 1 device, a killed process stops the others, and a run resumes on
another process count (2 -> 1 and 1 -> 2).

Every run is a subprocess (this file run as a script); the multi-process ones are started by
`python -m nfn_rl.launch`, as a user would.
"""

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import test_multidevice

# test_multidevice's small EPVF run, with a checkpoint halfway (the resume starts there).
CONFIG = {**test_multidevice.CONFIG, "checkpoint_interval": 3}
SEED = 3
HALFWAY = 3
ROOT = pathlib.Path(__file__).parent.parent
# A bound against hangs, not a budget: the runs take under a minute on a quiet 2-core CPU.
TIMEOUT_S = 900
# For the kill test; the training runs keep the launcher's default (60 s): 5 s declared a
# process starved of CPU dead on a loaded 2-core machine.
HEARTBEAT_S = 10


def _script(mode: str, out_dir: str) -> None:
    """The subprocess: train `CONFIG` in `out_dir` as `mode` says; process 0 prints JSON."""

    import jax

    # Without the jaxtyping hook, as in test_multidevice: the suite's process checks the shapes.
    import nfn_rl

    # First, before any computation: joins the other processes under `nfn_rl.launch`.
    nfn_rl.initialize_distributed()
    nfn_rl.enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    out = pathlib.Path(out_dir)
    config = nfn_rl.EPVFConfig(**CONFIG)

    if mode == "loop":
        # Trains until killed; says when every process is inside the training loop.
        def looping(done):
            (out / f"looping_{jax.process_index()}").write_text(str(os.getpid()))

        for _ in range(1000):
            nfn_rl.train(
                config, seed=SEED, out_dir=out / "run", progress=False, overwrite=True,
                on_chunk=looping,
            )  # fmt: skip
        return

    def keep_halfway(done):
        # A copy of the run as it stood halfway, for the resume test.
        if done == HALFWAY and nfn_rl.is_main_process():
            shutil.copytree(out / "run", out / "halfway")

    trainer, state = nfn_rl.train(
        config, seed=SEED, out_dir=out / "run", progress=False, resume=mode == "resume",
        on_chunk=keep_halfway,
    )  # fmt: skip
    leaves = jax.tree.leaves(state)
    result = {
        **test_multidevice.trained_run_facts(nfn_rl, config, trainer, state, out / "run"),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "state_devices": sorted({len(x.sharding.device_set) for x in leaves}),
        "state_replicated": all(x.sharding.is_fully_replicated for x in leaves),
    }
    if nfn_rl.is_main_process():
        print(json.dumps(result))


def _start(out_dir: pathlib.Path, *, processes: int = 1, devices: int = 1, mode: str = "train"):
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, __file__, mode, str(out_dir)]
    if processes > 1:
        launcher = ["-m", "nfn_rl.launch", "--processes", str(processes)]
        if mode == "loop":
            launcher += ["--heartbeat-timeout", str(HEARTBEAT_S)]
        command = [sys.executable, *launcher, *command[1:]]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def _assert_close(metrics: dict, expected: dict, rtol: float) -> None:
    assert metrics.keys() == expected.keys()
    for name, values in metrics.items():
        assert [math.isnan(v) for v in values] == [math.isnan(v) for v in expected[name]], name
        np.testing.assert_allclose(values, expected[name], rtol=rtol, err_msg=name)


def test_two_processes_match_two_devices_and_one_and_resume_on_other_counts(tmp_path):
    # One test, not a fixture shared by two: pytest-xdist could give each test a worker of its
    # own, and each worker would train the three runs again.
    root = tmp_path
    # The same run on 2 processes, on 1 process with 2 devices, and on 1 device, at once.
    started = {
        "processes": _start(root / "processes", processes=2),
        "devices": _start(root / "devices", devices=2),
        "one": _start(root / "one"),
    }
    results = {name: _result(process) for name, process in started.items()}
    processes, devices, one = results["processes"], results["devices"], results["one"]
    assert (processes["processes"], processes["devices"]) == (2, 2)
    assert (devices["processes"], devices["devices"]) == (1, 2)
    assert (one["processes"], one["devices"]) == (1, 1)
    # The 8 rollouts of an iteration: each process rolled out its own 4, and on 1 process with
    # 2 devices each device 4.
    assert processes["returns_devices"] == devices["returns_devices"] == 2
    assert processes["returns_shards"] == [[4]]
    assert devices["returns_shards"] == [[4], [4]]
    assert one["returns_shards"] == [[8]]
    # The state stays whole on every device between chunks.
    for run in (processes, devices):
        assert run["state_devices"] == [2] and run["state_replicated"]
    # One run id, and only process 0 wrote: one header and one row per iteration.
    assert len(processes["run_ids"]) == 1
    lines = (root / "processes" / "run" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + CONFIG["iterations"]
    assert sorted(p.name for p in (root / "processes" / "run").iterdir()) == [
        "checkpoint.eqx",
        "config.json",
        "metrics.csv",
        "returns.png",
    ]
    error = processes["num_envs_9_error"]
    assert "num_envs=9" in error and "(2) over 2 processes" in error
    assert "num_envs=9" in devices["num_envs_9_error"] and "(2)" in devices["num_envs_9_error"]
    assert one["num_envs_9_error"] is None

    # 2 processes run the program of 1 process with 2 devices, with the cross-device sums
    # through Gloo: measured bitwise equal on this CPU (rtol 0). Random numbers do not depend
    # on the sharding (threefry is partitionable), so against 1 device the runs differ only in
    # float32 rounding: the critic's gradient is summed in two parts first. The critic losses
    # moved by at most 1.4e-7 relative (measured; every other column was equal), and 1e-5
    # leaves room for that to grow; a rollout that changed would move a return by a whole step.
    _assert_close(processes["metrics"], devices["metrics"], rtol=0)
    _assert_close(processes["metrics"], one["metrics"], rtol=1e-5)

    # The halfway copies hold the checkpoint at iteration 3 and its 3 rows: the 2-process run's
    # resumes in 1 process, the 1-device run's in 2 processes, at once.
    for source, target in (("processes", "in_one"), ("one", "in_two")):
        shutil.copytree(root / source / "halfway", root / target / "run")
    in_one = _start(root / "in_one", mode="resume")
    in_two = _start(root / "in_two", processes=2, mode="resume")
    in_one, in_two = _result(in_one), _result(in_two)
    assert (in_one["processes"], in_one["devices"]) == (1, 1)
    assert (in_two["processes"], in_two["devices"]) == (2, 2)
    assert in_one["run_ids"] == results["processes"]["run_ids"]
    assert in_two["run_ids"] == results["one"]["run_ids"]
    # The tolerance of 1 device against 2 processes, for the same reason.
    for resumed in (in_one, in_two):
        _assert_close(resumed["metrics"], results["one"]["metrics"], rtol=1e-5)
        _assert_close(resumed["metrics"], results["processes"]["metrics"], rtol=1e-5)


def test_killing_a_process_stops_the_others(tmp_path):
    launcher = _start(tmp_path, processes=2, mode="loop")
    looping = [tmp_path / f"looping_{index}" for index in (0, 1)]
    deadline = time.monotonic() + TIMEOUT_S
    while not all(path.exists() for path in looping):
        assert launcher.poll() is None, launcher.communicate()[1]
        assert time.monotonic() < deadline, "the processes never started training"
        time.sleep(0.2)
    os.kill(int(looping[1].read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    # The survivor notices at its next exchange with the dead process, or at the latest after
    # the heartbeat timeout, then waits out the shutdown barrier (2 heartbeats): never a hang.
    _, stderr = launcher.communicate(timeout=10 * HEARTBEAT_S + 30)
    assert launcher.returncode != 0
    assert "process 1 exited with code -9" in stderr
    # Process 0 stopped by itself, with JAX's error naming a dead peer; the launcher killed
    # nothing.
    assert "killing the processes still running" not in stderr
    assert any(
        clue in stderr
        for clue in ("Connection closed by peer", "heartbeat timeout", "another task died")
    ), stderr[-2000:]
    assert time.monotonic() - killed_at < 10 * HEARTBEAT_S + 30


def test_launcher_sets_each_process_and_refuses_no_processes(capsys):
    from nfn_rl import launch

    environments = launch.process_environments(3, 1234, 7, base={"KEPT": "1"})
    assert [e["JAX_PROCESS_ID"] for e in environments] == ["0", "1", "2"]
    for e in environments:
        assert e["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
        assert (e["JAX_NUM_PROCESSES"], e["NFN_RL_HEARTBEAT_TIMEOUT_S"], e["KEPT"]) == (
            "3",
            "7",
            "1",
        )
    with pytest.raises(SystemExit):
        launch.main(["--processes", "0", "script.py"])
    assert "--processes: must be at least 1, got 0" in capsys.readouterr().err


def test_a_single_process_joins_nothing(monkeypatch):
    import nfn_rl

    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    assert nfn_rl.initialize_distributed() is False
    assert nfn_rl.is_main_process()


if __name__ == "__main__":
    _script(sys.argv[1], sys.argv[2])
