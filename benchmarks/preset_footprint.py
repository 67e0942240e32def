"""Compile one training chunk of an Ant preset ahead of time and print what it needs, without
running it: compile time and XLA's memory analysis (arguments, outputs, temporaries).

    python benchmarks/preset_footprint.py --preset paper --method unf+params
    python benchmarks/preset_footprint.py --preset paper --method ppo

This is the check that the `paper` presets build, unchanged, at the paper's scale on a machine
that cannot run them (the CPU here), and the number to compare with a GPU's memory before
renting one. It compiles exactly the function training runs (`nfn_rl.run._loop.run_chunk`:
`log_interval` iterations under `lax.scan`, for `--seeds` seeds stacked as data) for the local
backend; a GPU's compiled program and memory differ somewhat, so treat the figures as an
estimate.
"""

import dataclasses
import os
import platform
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxlib
import tyro

import nfn_rl
from nfn_rl import baselines
from nfn_rl.run._loop import init_states, run_chunk, seed_keys

Method = Literal["flat", "probing", "probing+params", "unf", "unf+params", "ppo", "sac"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    preset: the Ant preset ("smoke", "cpu" or "paper").
    method: an EPVF critic, or the "ppo" / "sac" baseline.
    seeds: seeds trained in the one program (the state is held once per seed).
    """

    preset: Literal["smoke", "cpu", "paper"] = "paper"
    method: Method = "unf+params"
    seeds: int = 1


def _trainer(args: Args):
    if args.method in ("ppo", "sac"):
        config = baselines.baseline_config(args.method, args.preset)
    else:
        config = nfn_rl.ant_config(args.preset, critic=args.method)
    return config, nfn_rl.make_trainer(config)


def _gib(size: int) -> str:
    return f"{size / 2**30:.3f} GiB"


def main(args: Args) -> None:
    print(f"machine: {platform.platform()} | cpus: {os.cpu_count()} | devices: {jax.devices()}")
    print(f"jax {jax.__version__}  jaxlib {jaxlib.__version__}")
    config, trainer = _trainer(args)
    print(f"{args.preset} preset, {args.method}, {args.seeds} seed(s): {config}")
    state = eqx.filter_eval_shape(init_states, trainer, seed_keys(list(range(args.seeds))))
    # `run_chunk`'s own function under a plain `jax.jit`, which (unlike `eqx.filter_jit`) takes
    # the shapes of the states in place of the states themselves.
    dynamic, static = eqx.partition(trainer, eqx.is_array)

    def chunk(dynamic, states, start):
        return run_chunk.__wrapped__(eqx.combine(dynamic, static), states, start)

    start = time.perf_counter()
    lowered = jax.jit(chunk, donate_argnums=1).lower(
        dynamic, state, jax.ShapeDtypeStruct((), jnp.int32)
    )
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
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
