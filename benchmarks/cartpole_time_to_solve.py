"""Wall time for EPVF to solve Cartpole (evaluation return 500) with the default config.

    python benchmarks/cartpole_time_to_solve.py [--seeds 3]

Prints the machine, the library versions, per seed the wall time until the unperturbed policy's
evaluation return first reaches 500 (measured from the start of the training loop, so it includes
the XLA compilation of the first chunk), the median over seeds, and how one iteration's time
splits between rollouts, critic updates, policy updates and evaluation (each piece jitted and
timed on its own).

Each seed is its own single-seed run (`nfn_rl.train`), with the in-memory compilation caches
cleared before it, so that every seed's time includes its compilation as a first run's would
(seeds are data: without the clearing, seeds after the first would reuse the first one's
compiled program).
"""

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jaxlib
import tyro
from _machine import machine_line

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    seeds: number of seeds (0, 1, ...).
    repeats: timed calls per piece for the time shares.
    compile_cache: use the persistent XLA compilation cache (faster second runs).
    """

    seeds: int = 3
    repeats: int = 50
    compile_cache: bool = False


def time_to_solve(config: nfn_rl.EPVFConfig, seed: int) -> tuple[float | None, int | None, float]:
    """(wall s, iteration) of the first evaluation at the maximum return, and the total time."""
    jax.clear_caches()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer, _ = nfn_rl.train(config, seed=seed, out_dir=out, progress=False)
        total = time.perf_counter() - start
        rows = nfn_rl.read_metrics(Path(out) / "metrics.csv")
    solved = [r for r in rows if r["eval_return"] >= trainer.env.max_return]
    if not solved:
        return None, None, total
    return solved[0]["wall_s"], solved[0]["iteration"], total


def time_pieces(config: nfn_rl.EPVFConfig, repeats: int) -> dict[str, float]:
    """Milliseconds per call of each separately jitted piece of an iteration."""
    trainer = nfn_rl.make_trainer(config)
    key = jax.random.key(0)
    state = eqx.filter_jit(lambda t, k: t.init(k))(trainer, key)
    # A buffer filled with rollouts of the initial policy, as after a few iterations.
    population = eqx.filter_jit(lambda t, s, k: t.collect(s.policy, key=k))(trainer, state, key)
    state = dataclasses.replace(
        state, buffer=state.buffer.insert((population.params, population.returns))
    )
    state = trainer.place(state)
    # Each piece returns only what it changes: returning the whole state would time a copy of
    # the replay buffer that the fused training loop never makes.
    pieces = {
        "rollouts": lambda t, s, k: t.collect(s.policy, key=k).returns,
        "critic updates": lambda t, s, k: t.critic_update(s, key=k)[0].critic,
        "policy updates": lambda t, s, k: t.policy_update(s).policy,
        "evaluation (every eval_interval)": lambda t, s, k: t.evaluate(s, key=k),
    }
    timings = {}
    for name, piece in pieces.items():
        fn = eqx.filter_jit(piece)
        jax.block_until_ready(fn(trainer, state, key))
        start = time.perf_counter()
        for i in range(repeats):
            jax.block_until_ready(fn(trainer, state, jax.random.fold_in(key, i)))
        timings[name] = (time.perf_counter() - start) / repeats * 1e3
    timings["evaluation (every eval_interval)"] /= config.eval_interval
    return timings


def main(args: Args) -> None:
    if args.compile_cache:
        nfn_rl.enable_compilation_cache()
    print(machine_line())
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, devices {jax.devices()}")
    config = nfn_rl.EPVFConfig()
    print(f"config: {config}")
    solve_times = []
    for seed in range(args.seeds):
        wall, iteration, total = time_to_solve(config, seed)
        status = f"solved at {wall:.1f} s (iteration {iteration})" if wall else "not solved"
        print(f"seed {seed}: {status}; whole run {total:.1f} s", flush=True)
        solve_times.append(wall if wall is not None else float("inf"))
    print(
        f"median time to eval return {nfn_rl.make_env(config.env).max_return:.0f}: "
        f"{statistics.median(solve_times):.1f} s (training loop incl. compilation)"
    )
    timings = time_pieces(config, args.repeats)
    total = sum(timings.values())
    print("per iteration:")
    for name, ms in timings.items():
        print(f"  {name:34s} {ms:7.2f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main(tyro.cli(Args))
