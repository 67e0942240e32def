"""Compile one training chunk of an Ant preset ahead of time and print what it needs, without
running it: compile time and XLA's memory analysis (arguments, outputs, temporaries).

    python benchmarks/preset_footprint.py --preset paper --method unf+params
    python benchmarks/preset_footprint.py --preset paper --method ppo

This is the check that the `paper` presets build, unchanged, at the paper's scale on a machine
that cannot run them (the CPU here), and the number to compare with a GPU's memory before
renting one. It compiles exactly the function training runs (`nfn_rl._loop.run_chunk`'s body:
`log_interval` iterations under `lax.scan`) for the local backend; a GPU's compiled program and
memory differ somewhat, so treat the figures as an estimate.
"""

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jaxlib
import tyro

import nfn_rl
from nfn_rl import baselines

Method = Literal["flat", "probing", "probing+params", "unf", "unf+params", "ppo", "sac"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    preset: the Ant preset ("smoke", "cpu" or "paper").
    method: an EPVF critic, or the "ppo" / "sac" baseline.
    """

    preset: Literal["smoke", "cpu", "paper"] = "paper"
    method: Method = "unf+params"


def _trainer(args: Args):
    if args.method in ("ppo", "sac"):
        config = baselines.baseline_config(args.method, args.preset)
        return config, baselines.make_baseline(config)
    config = nfn_rl.ant_config(args.preset, critic=args.method)
    return config, nfn_rl.make_train(config)


def _gib(size: int) -> str:
    return f"{size / 2**30:.3f} GiB"


def main(args: Args) -> None:
    print(f"machine: {platform.platform()} | cpus: {os.cpu_count()} | devices: {jax.devices()}")
    print(f"jax {jax.__version__}  jaxlib {jaxlib.__version__}")
    config, trainer = _trainer(args)
    print(f"{args.preset} preset, {args.method}: {config}")
    state = eqx.filter_eval_shape(trainer.init)
    start = time.perf_counter()
    lowered = jax.jit(lambda s: trainer.run_chunk(s), donate_argnums=0).lower(state)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    chunk = f"chunk of {config.log_interval} iterations"
    print(f"{chunk}: lower {lower_s:.1f} s, compile {compile_s:.1f} s")
    memory = compiled.memory_analysis()
    if memory is None:
        print("memory analysis: not available on this backend")
        return
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(
        f"state {_gib(state_bytes)} | arguments {_gib(memory.argument_size_in_bytes)} | "
        f"outputs {_gib(memory.output_size_in_bytes)} | "
        f"temporaries {_gib(memory.temp_size_in_bytes)}"
    )
    peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
    print(f"footprint_gib={peak / 2**30:.3f} compile_s={compile_s:.1f}")


if __name__ == "__main__":
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/nfn/jax")),
    )
    main(tyro.cli(Args))
