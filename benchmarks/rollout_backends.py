"""Ant episodes per backend: env (control) steps/s of MJX against the native MuJoCo C engine.

    python benchmarks/rollout_backends.py [--envs 256 1024 4096] [--horizon 100] [--threads N]

For each Ant variant and population size, the same perturbed (32, 32) tanh policies (the `cpu`
preset's policy and noise scale) play one episode each from the home reset:

- mjx: ``jax.jit(jax.vmap(episode_length_and_return))`` over the policies, as EPVF collects;
  compiled ahead of time, so compilation is excluded.
- native: `nfn_rl.envs.NativeAntRollout` (``num_threads`` threads), finished episodes dropped;
  "native, all": the same with ``drop_done=False`` (finished episodes kept stepping, like MJX).

Steps are counted as ``envs x horizon`` on every backend (the nominal steps of a fixed-horizon
rollout), so dropping finished episodes shows up as speed; the "alive" column is the fraction of
those steps before episodes end (1.0 when no episode ends early). The last line is
``native/mjx env steps/s at 2048 envs (torque Ant): X.XXx``. On a shared machine the wall-clock
numbers depend on the other processes' load (printed before and after); the last two columns,
steps per CPU-second of this process (all its threads), are less sensitive to it.

Cost on 2 CPU cores: about two minutes at the defaults (most of it MJX compiling and running the
position variant at 4096 envs); the machine should otherwise be idle.
"""

import dataclasses
import os
import time

import equinox as eqx
import jax
import tyro

import nfn_rl
from nfn_rl import episode_length_and_return, make_policy, perturb_population
from nfn_rl.envs import Ant, NativeAntRollout


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    envs: population sizes (episodes per call).
    horizon: steps per episode.
    threads: native threads (default: os.cpu_count()).
    repeats: timed calls per backend and size (the best is reported).
    compile_cache: use the persistent XLA compilation cache.
    """

    envs: tuple[int, ...] = (256, 1024, 4096)
    horizon: int = 100
    threads: int | None = None
    repeats: int = 2
    compile_cache: bool = True


def _population(env: Ant, num: int):
    policy = make_policy(env, 32, 2, key=jax.random.key(0))
    population = perturb_population(policy, num, key=jax.random.key(1), scale=0.3)
    return eqx.partition(population, eqx.is_array)


def _seconds(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of ``fn()``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def measure(variant: str, num: int, args: Args) -> dict[str, float]:
    """Env steps/s of each backend for ``num`` policies of the ``variant`` Ant."""
    env = Ant(variant, horizon=args.horizon)
    params, static = _population(env, num)
    key = jax.random.key(0)

    def mjx(env, params):
        one = lambda p: episode_length_and_return(env, eqx.combine(p, static), key)  # noqa: E731
        return jax.vmap(one)(params)

    compiled = jax.jit(mjx).lower(env, params).compile()
    backends = {
        "mjx": lambda: jax.block_until_ready(compiled(env, params)),
        "native": lambda: native.episode_lengths_and_returns(params, static),
        "native_all": lambda: native_all.episode_lengths_and_returns(params, static),
    }
    with (
        NativeAntRollout(env, args.threads) as native,
        NativeAntRollout(env, args.threads, drop_done=False) as native_all,
    ):
        lengths, _ = native.episode_lengths_and_returns(params, static)
        # Interleaved and the best of `repeats`, so that load from other processes on a shared
        # machine biases no backend in particular.
        best = {name: (float("inf"), float("inf")) for name in backends}
        for _ in range(args.repeats):
            for name, fn in backends.items():
                best[name] = min(best[name], _seconds(fn))
    steps = num * args.horizon
    row = {"alive": float(lengths.sum()) / steps}
    row |= {name: steps / wall for name, (wall, _) in best.items()}
    return row | {f"{name}_cpu": steps / cpu for name, (_, cpu) in best.items()}


def main(args: Args) -> None:
    if args.compile_cache:
        nfn_rl.enable_compilation_cache()
    threads = args.threads or os.cpu_count()
    print(f"horizon {args.horizon}, {threads} native threads, {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'variant':>8} {'envs':>5} {'alive':>5} {'mjx steps/s':>12} {'native':>12} "
        f"{'native, all':>12} {'native/mjx':>10} {'per CPU-s: mjx':>15} {'native':>10}"
    )
    print(header)
    ratio_2048 = None
    sizes = sorted(set(args.envs) | {2048})
    for variant in ("torque", "position"):
        for num in sizes:
            if num == 2048 and variant != "torque" and 2048 not in args.envs:
                continue
            row = measure(variant, num, args)
            ratio = row["native"] / row["mjx"]
            if variant == "torque" and num == 2048:
                ratio_2048 = ratio
            print(
                f"{variant:>8} {num:>5} {row['alive']:>5.2f} {row['mjx']:>12,.0f} "
                f"{row['native']:>12,.0f} {row['native_all']:>12,.0f} {ratio:>9.2f}x "
                f"{row['mjx_cpu']:>15,.0f} {row['native_cpu']:>10,.0f}",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"native/mjx env steps/s at 2048 envs (torque Ant): {ratio_2048:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
