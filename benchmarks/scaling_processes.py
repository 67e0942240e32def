"""EPVF iterations on 1, 2 and 4 local processes (`python -m nfn_rl.launch`), and what the
paper's scale would exchange between GPUs.

    python benchmarks/scaling_processes.py [--processes 1 2 4] [--num-envs 64] [--repeats 3]

Each count runs the same Cartpole EPVF config as that many processes with one CPU device each,
joined by `jax.distributed` over Gloo, and once more as 1 process with 2 devices (the same
sharding without the processes). Every process initialises the state, runs one jitted
chunk of `log_interval` iterations (compilation) and then `repeats` timed chunks; a chunk is
finished when its metrics are on the host. Process 0 prints the iteration time and the env
steps per second (the steps `metrics.csv` counts: those before each episode ends).

On one machine the processes share its cores: more processes do not add compute, they add the
exchanges between processes (Gloo over TCP on loopback). What the table shows is that overhead,
not a speed-up; more processes pay off when each brings its own GPU or machine.

The projection then counts what one EPVF iteration exchanges, from the parameter counts of the
`paper` preset's policy and critic (built as shapes, nothing compiled): every device receives
the other devices' perturbed policies and their returns (the buffer is replicated), and every
critic step sums the critic's gradient across devices. The policy steps run replicated and
exchange nothing. The last line is JSON.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    processes: the process counts to time.
    num_envs: perturbed policies per iteration (a multiple of every count).
    horizon: Cartpole's episode limit.
    log_interval: iterations per jitted chunk.
    repeats: timed chunks per count.
    paper_policies: policies per iteration of the projection (the paper preset scaled 8x).
    worker: internal: run as one process of a count.
    """

    processes: tuple[int, ...] = (1, 2, 4)
    num_envs: int = 64
    horizon: int = 200
    log_interval: int = 5
    repeats: int = 3
    paper_policies: int = 8 * 4096
    worker: bool = False


def _config(args: Args):
    import nfn_rl

    return nfn_rl.EPVFConfig(
        horizon=args.horizon,
        num_envs=args.num_envs,
        batch_size=args.num_envs,
        log_interval=args.log_interval,
        iterations=args.log_interval * (1 + args.repeats),
        checkpoint_interval=args.log_interval * (1 + args.repeats),
        eval_interval=args.log_interval * (1 + args.repeats),
    )


def worker(args: Args) -> None:
    """One process of a count: time the chunks; process 0 prints JSON."""
    import jax
    import jax.numpy as jnp

    import nfn_rl
    from nfn_rl.run._distributed import host_values

    nfn_rl.initialize_distributed()
    trainer = nfn_rl.make_trainer(_config(args))
    states = trainer.place(nfn_rl.run.init_states(trainer, nfn_rl.run.seed_keys((0,))))
    states = jax.tree.map(jnp.copy, states)
    times, steps = [], []
    for chunk in range(1 + args.repeats):
        start = time.perf_counter()
        first = jnp.asarray(chunk * args.log_interval, jnp.int32)
        states, metrics = nfn_rl.run.run_chunk(trainer, states, first)
        metrics = host_values(metrics)
        times.append(time.perf_counter() - start)
        steps.append(int(metrics["episode_steps"].sum()))
    timed = sum(times[1:])
    if nfn_rl.is_main_process():
        print(
            json.dumps(
                {
                    "processes": jax.process_count(),
                    "devices": jax.device_count(),
                    "first_chunk_s": times[0],
                    "iteration_s": timed / (args.repeats * args.log_interval),
                    "env_steps_per_s": sum(steps[1:]) / timed,
                }
            )
        )


def _run_count(args: Args, processes: int, devices: int = 1) -> dict:
    flags = [
        f"--num-envs={args.num_envs}",
        f"--horizon={args.horizon}",
        f"--log-interval={args.log_interval}",
        f"--repeats={args.repeats}",
        "--worker",
    ]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, "-m", "nfn_rl.launch", "--processes", str(processes)]
    result = subprocess.run(
        [*command, os.path.abspath(__file__), *flags],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def paper_volume(policies: int) -> dict:
    """What one iteration of the `paper` preset with `policies` policies exchanges, in bytes."""
    import equinox as eqx
    import jax

    import nfn_rl

    config = nfn_rl.ant_config("paper", num_envs=policies, backend="mjx")
    trainer = nfn_rl.make_trainer(config)
    state = eqx.filter_eval_shape(trainer.init, jax.random.key(0))
    policy_params = sum(x.size for x in jax.tree.leaves(state.policy))
    critic_params = sum(x.size for x in jax.tree.leaves(state.critic))
    # float32 everywhere: the perturbed policies and their returns gathered on every device,
    # and one gradient sum per critic step.
    population = policies * (policy_params + 1) * 4
    gradients = config.critic_steps * critic_params * 4
    return {
        "policies": policies,
        "policy_params": policy_params,
        "critic_params": critic_params,
        "critic_steps": config.critic_steps,
        "population_bytes": population,
        "gradient_bytes": gradients,
    }


def _projection(volume: dict) -> list[str]:
    """Time on the wire per iteration on 2 nodes x 8 GPUs, for two link speeds."""
    lines = []
    for name, bytes_per_s in (("InfiniBand 200 Gb/s", 25e9), ("NVLink 450 GB/s", 450e9)):
        # A ring all-gather or all-reduce over 16 devices moves (16-1)/16 of the data through
        # each link (an all-reduce twice that).
        share = 15 / 16
        gather_s = volume["population_bytes"] * share / bytes_per_s
        reduce_s = 2 * volume["gradient_bytes"] * share / bytes_per_s
        lines.append(
            f"  {name}: population {gather_s * 1e3:.0f} ms + critic gradients "
            f"{reduce_s * 1e3:.1f} ms per iteration"
        )
    return lines


def main(args: Args) -> None:
    results = [_run_count(args, n) for n in args.processes]
    # The same sharding in one process: what the exchanges between processes add to it.
    two_devices = _run_count(args, 1, devices=2)
    volume = paper_volume(args.paper_policies)
    versions = {
        name: importlib.metadata.version(name)
        for name in ("jax", "jaxlib", "equinox", "mujoco", "mujoco-mjx")
    }
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"versions: {versions}")
    print(f"Cartpole EPVF, {args.num_envs} policies x horizon {args.horizon}, 1 CPU device each")
    print("| processes x devices | iteration [s] | env steps/s | first chunk (compile) [s] |")
    print("|---|---|---|---|")
    for r in [*results, two_devices]:
        print(
            f"| {r['processes']} x {r['devices'] // r['processes']} | {r['iteration_s']:.3f} | "
            f"{r['env_steps_per_s']:,.0f} | {r['first_chunk_s']:.1f} |"
        )
    print(
        f"paper preset x{volume['policies'] // 4096}: {volume['policies']} policies of "
        f"{volume['policy_params']:,} parameters -> {volume['population_bytes'] / 1e6:,.0f} MB "
        f"gathered per iteration; critic of {volume['critic_params']:,} parameters x "
        f"{volume['critic_steps']} steps -> {volume['gradient_bytes'] / 1e6:,.1f} MB summed"
    )
    print("\n".join(_projection(volume)))
    results.append(two_devices)
    print(json.dumps({"results": results, "paper": volume, "versions": versions}))


if __name__ == "__main__":
    parsed = tyro.cli(Args)
    if parsed.worker:
        worker(parsed)
    else:
        main(parsed)
