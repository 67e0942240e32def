"""Seeds as data: several seeds in one process and one compiled program against one process per
seed, on Cartpole, with a cold and with a warm persistent compilation cache.

    python benchmarks/seeds_as_data.py [--seeds 3] [--iterations 100] [--log-interval 25]
                                       [--repeats 3]

Every run is `python examples/cartpole_epvf.py` with the default `EPVFConfig` but `--iterations`
and `--log-interval`, as a user would start it (fresh process: interpreter start, imports,
compilation, training, the script's closing evaluation): once with `--seeds N` (the seeds train
in one compiled program, `nfn_rl.train_seeds`), and N times with `--seed k` (one process per
seed, one after another). The caches:

- cold: every process gets its own empty `JAX_COMPILATION_CACHE_DIR`, as a first run does;
- shared, cold at start: the N single-seed processes share one cache that starts empty, so the
  later processes find the first one's compilations (the N-seed process is the cold row);
- warm: the same commands again, on the caches the cold runs filled.

Wall time is that of the processes (summed over the N single-seed processes), CPU time their
user + system time; compile time is what JAX reports inside them (tracing, lowering to MLIR and
XLA compilation or the cache read, summed over every jitted function). With `--repeats R` the
whole sequence runs R times, with fresh caches each time, and each row shows its fastest repeat
(on a shared machine the slower ones measure the other jobs). The last line compares the cold
rows: `seeds as data (N seeds, cold cache): X.XXx faster than N single-seed processes`.
Cost on 2 CPU cores: about 3 minutes a repeat.
"""

import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tyro
from _machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "cartpole_epvf.py"
MARKER = "seeds_as_data_compile_s="

# Runs the example as `__main__` after registering a listener that adds up JAX's compile-time
# events, printed at exit (the example itself is unchanged).
_WRAPPER = f"""
import atexit, runpy, sys
import jax

EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
total = [0.0]

def listen(event, duration, **kwargs):
    if event in EVENTS:
        total[0] += duration

jax.monitoring.register_event_duration_secs_listener(listen)
atexit.register(lambda: print("{MARKER}%.3f" % total[0], flush=True))
sys.argv = sys.argv[1:]
sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    seeds: seeds 0 .. seeds-1.
    iterations: `EPVFConfig.iterations` of every run.
    log_interval: `EPVFConfig.log_interval` of every run (iterations per compiled chunk).
    repeats: run everything this many times; each row shows its fastest repeat.
    """

    seeds: int = 3
    iterations: int = 100
    log_interval: int = 25
    repeats: int = 1


@dataclasses.dataclass
class Measured:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    compile_s: float = 0.0
    processes: int = 0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(args: Args, seed_flags: list[str], cache: Path, out: Path) -> Measured:
    """One process of the example; its wall and compile seconds."""
    command = [
        sys.executable,
        "-c",
        _WRAPPER,
        str(SCRIPT),
        f"--config.iterations={args.iterations}",
        f"--config.log-interval={args.log_interval}",
        "--out",
        str(out),
        "--no-progress",
        *seed_flags,
    ]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
    start, cpu_start = time.perf_counter(), _children_cpu_s()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu_start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:])} failed:\n{result.stderr[-3000:]}")
    compile_s = [
        float(line.removeprefix(MARKER))
        for line in result.stdout.splitlines()
        if line.startswith(MARKER)
    ]
    return Measured(wall, cpu, compile_s[-1], 1)


def _add(total: Measured, one: Measured) -> Measured:
    return Measured(*(a + b for a, b in zip(dataclasses.astuple(total), dataclasses.astuple(one))))


def _measure_all(args: Args) -> dict[str, Measured]:
    """One pass of every row, with fresh caches."""
    n, seeds = args.seeds, range(args.seeds)
    rows: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        together_cache, shared_cache = tmp / "cache_together", tmp / "cache_shared"

        def together(name: str, cache: Path) -> None:
            rows[name] = _run(args, ["--seeds", str(n)], cache, tmp / name)
            print(f"  {name}: {rows[name].wall_s:.1f} s", flush=True)

        def apart(name: str, caches: list[Path]) -> None:
            total = Measured()
            for seed, cache in zip(seeds, caches, strict=True):
                total = _add(
                    total, _run(args, ["--seed", str(seed)], cache, tmp / name / str(seed))
                )
            rows[name] = total
            print(f"  {name}: {total.wall_s:.1f} s", flush=True)

        together(f"1 process, --seeds {n}, cold cache", together_cache)
        apart(f"{n} processes, --seed k, cold cache each", [tmp / f"cache_{s}" for s in seeds])
        apart(f"{n} processes, --seed k, shared cache (cold at start)", [shared_cache] * n)
        together(f"1 process, --seeds {n}, warm cache", together_cache)
        apart(f"{n} processes, --seed k, warm cache", [shared_cache] * n)
    return rows


def main(args: Args) -> None:
    print(machine_line())
    print(
        f"cartpole_epvf.py, default EPVFConfig but iterations={args.iterations}, "
        f"log_interval={args.log_interval}; seeds 0..{args.seeds - 1}; "
        f"fastest of {args.repeats} repeat(s)"
    )
    n = args.seeds
    rows: dict[str, Measured] = {}
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
        for name, measured in _measure_all(args).items():
            if name not in rows or measured.wall_s < rows[name].wall_s:
                rows[name] = measured

    cold_together = rows[f"1 process, --seeds {n}, cold cache"]
    width = max(map(len, rows))
    print()
    print(f"| {'run':{width}s} | processes | wall s | CPU s | compile s | wall / 1-process cold |")
    print(f"|{'-' * (width + 2)}|----------:|-------:|------:|----------:|----------------------:|")
    for name, m in rows.items():
        print(
            f"| {name:{width}s} | {m.processes:9d} | {m.wall_s:6.1f} | {m.cpu_s:5.0f} | "
            f"{m.compile_s:9.1f} | {m.wall_s / cold_together.wall_s:21.2f} |"
        )
    cold_apart = rows[f"{n} processes, --seed k, cold cache each"]
    print()
    print(
        f"seeds as data ({n} seeds, cold cache): {cold_apart.wall_s / cold_together.wall_s:.2f}x "
        f"faster than {n} single-seed processes"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
