"""Data-parallel EPVF training on 2 devices: the native Ant's host calls give the 1-device
returns. The run of `CONFIG` on 2 devices against 1 device (rollouts split, state replicated,
metrics equal) is checked in tests/test_multiprocess.py, beside the same run on 2 processes.

The device count of a JAX process is fixed when its backend starts, so each run is a subprocess
(this file run as a script) with `--xla_force_host_platform_device_count` virtual CPU devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from short_runs import SMALL_NETWORKS, cadence

CONFIG = dict(
    horizon=50,
    num_envs=8,
    batch_size=8,
    iterations=6,
    **cadence(log=3, checkpoint=6, episodes=2),
    **SMALL_NETWORKS,
)
SEED = 3


def _import_nfn_rl():
    """`nfn_rl` with the suite's compilation cache. Without the jaxtyping hook: the suite's own
    process checks the same functions' shapes, and the hook costs each subprocess about 3 s of
    import and slower tracing (measured)."""
    import jax

    import nfn_rl

    nfn_rl.enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return nfn_rl


def trained_run_facts(nfn_rl, config, trainer, state, run_dir: pathlib.Path) -> dict:
    """What the multi-device and multi-process tests compare after training in ``run_dir``: its
    metrics, where one more collection's returns live (``returns_shards``: this process's
    shards), and the error for a ``num_envs`` (9) the devices do not divide. ``nfn_rl`` is passed
    in because the subprocesses import it themselves."""
    import dataclasses

    import equinox as eqx
    import jax

    rows = nfn_rl.read_metrics(run_dir / "metrics.csv")
    returns = eqx.filter_jit(lambda t, s, k: t.collect(s.policy, key=k).returns)(
        trainer, state, jax.random.key(0)
    )
    try:
        nfn_rl.make_trainer(dataclasses.replace(config, num_envs=9))
        error = None
    except ValueError as e:
        error = str(e)
    return {
        "run_ids": sorted({r["run_id"] for r in rows}),
        "metrics": {k: [r[k] for r in rows] for k in rows[0] if k not in ("wall_s", "run_id")},
        "returns_devices": len(returns.sharding.device_set),
        "returns_shards": sorted(tuple(s.data.shape) for s in returns.addressable_shards),
        "num_envs_9_error": error,
    }


# The native Ant's episodes under `shard_map`: one host call per device, from different threads.
NATIVE_CONFIG = CONFIG | dict(env="ant-torque", backend="native", horizon=30, num_envs=64)
NATIVE_CONFIG |= dict(iterations=2, log_interval=1, eval_interval=1, checkpoint_interval=2)


def _native_collect(nfn_rl) -> dict:
    """Lengths and returns of one collection on all visible devices, with the native Ant."""
    import equinox as eqx
    import jax

    trainer = nfn_rl.make_trainer(nfn_rl.EPVFConfig(**NATIVE_CONFIG))
    state = trainer.place(eqx.filter_jit(trainer.init)(jax.random.key(SEED)))
    population = eqx.filter_jit(lambda t, s, k: t.collect(s.policy, key=k))(
        trainer, state, jax.random.key(0)
    )
    lengths, returns = population.lengths, population.returns
    return {
        "devices": jax.device_count(),
        "lengths": np.asarray(lengths).tolist(),
        "returns": np.asarray(returns).tolist(),
        "returns_devices": len(returns.sharding.device_set),
    }


def _run_native(out_dir: str) -> dict:
    """`_native_collect`, then two iterations of training (evaluation included)."""
    nfn_rl = _import_nfn_rl()

    facts = _native_collect(nfn_rl)
    config = nfn_rl.EPVFConfig(**NATIVE_CONFIG)
    nfn_rl.train(config, seed=SEED, out_dir=out_dir, progress=False)
    facts["trained_iterations"] = len(nfn_rl.read_metrics(pathlib.Path(out_dir) / "metrics.csv"))
    return facts


def _start(devices: int, out_dir: pathlib.Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
    )
    return subprocess.Popen(
        [sys.executable, __file__, str(out_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen, timeout: float = 300) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the run did not finish within {timeout} s (hung?)") from None
    assert process.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def test_native_backend_on_two_devices_returns_the_one_device_returns(tmp_path):
    """Each device's host call plays its half of the episodes; they used to share one rollout at
    once, which gave wrong returns, then a segfault or a hang."""
    import nfn_rl

    two = _start(2, tmp_path / "two")
    one = _native_collect(nfn_rl)
    two = _result(two, timeout=150)
    assert (two["devices"], one["devices"]) == (2, 1)
    assert two["returns_devices"] == 2
    assert two["lengths"] == one["lengths"]
    assert two["returns"] == one["returns"]  # bitwise: float32 values through JSON
    assert two["trained_iterations"] == NATIVE_CONFIG["iterations"]


if __name__ == "__main__":
    print(json.dumps(_run_native(sys.argv[1])))
