"""The host loop every trainer shares: all seeds in one compiled program, jitted chunks of
iterations, one run directory per seed (`config.json`, `metrics.csv`, `checkpoint.eqx`,
`returns.png`), resume, and a progress bar."""

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PyTree
from tqdm.auto import tqdm

from nfn_rl.run._checkpoint import load_checkpoint, nfn_version, save_checkpoint
from nfn_rl.run._report import METRIC_COLUMNS, append_metrics, plot_returns, read_metrics
from nfn_rl.run._trainer import Trainer


def run_dirs(out_dir: str | os.PathLike, seeds: Sequence[int]) -> list[Path]:
    """The run directory of each seed: `out_dir` itself for one seed, else `out_dir/seed_<s>`."""
    out = Path(out_dir)
    if len(seeds) == 1:
        return [out]
    return [out / f"seed_{seed}" for seed in seeds]


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds: each seed must be an integer >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: must be distinct, got {seeds}")
    return seeds


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """The stacked PRNG keys of `seeds` (`jax.random.key(seed)` each)."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


@eqx.filter_jit
def init_states(trainer: Trainer, keys: jax.Array) -> PyTree:
    """The initial states of the seeds whose keys are `keys`, stacked on a leading seed axis."""
    # `lax.map`, not `vmap`: see `run_chunk`.
    return jax.lax.map(trainer.init, keys)


@eqx.filter_jit(donate="all-except-first")
def run_chunk(
    trainer: Trainer, states: PyTree, start: Int[Array, ""]
) -> tuple[PyTree, dict[str, Array]]:
    """`trainer.run_chunk` of every seed (leading seed axis on `states` and the metrics),
    jitted; `states` is donated.

    The seeds run one after another inside the one program (`lax.map`): each seed then runs
    exactly the computation of a single-seed run, so its metrics and state are bitwise those of
    training it alone. `vmap` would batch them, and XLA's batched kernels sum in another order
    (measured on Cartpole: critic losses differ in the last bit after 4 iterations). On a CPU
    one seed's iteration already occupies the cores; what seeds as data save is the compilation
    and tracing of each further seed.
    """
    return jax.lax.map(lambda s: trainer.run_chunk(s, start), states)


def _stack(trees: list[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _seed_state(states: PyTree, index: int) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x[index]), states)


def run_training(
    trainer: Trainer,
    *,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    resume: bool,
    progress: bool,
    desc: str,
    on_chunk: Callable[[int], None] | None = None,
) -> PyTree:
    """Train every seed from scratch (or from its checkpoint with `resume`) to
    `config.iterations` in one compiled program, recording each seed's run in its directory
    (`run_dirs`); returns the final states, stacked on a leading seed axis.

    A seed's metrics and state do not depend on which other seeds train beside it.
    """
    config = trainer.config
    seeds = _check_seeds(seeds)
    dirs = run_dirs(out_dir, seeds)
    config_json = config.to_json()
    if resume:
        loaded = [load_checkpoint(d / "checkpoint.eqx", trainer) for d in dirs]
        for (_, header), seed, d in zip(loaded, seeds, dirs, strict=True):
            if header["seed"] != seed:
                raise ValueError(
                    f"{d / 'checkpoint.eqx'} holds seed {header['seed']}, not seed {seed}"
                )
        iterations = {header["iteration"] for _, header in loaded}
        if len(iterations) > 1:
            raise ValueError(
                f"the seeds' checkpoints are at different iterations {sorted(iterations)}; "
                "resume them separately"
            )
        states = _stack([state for state, _ in loaded])
        env_steps = [header["env_steps"] for _, header in loaded]
        wall_offset = max(header["wall_s"] for _, header in loaded)
        done = iterations.pop()
        for d in dirs:
            # Rows written after the checkpoint belong to the lost part of the run.
            rows = read_metrics(d / "metrics.csv", drop_incomplete=True)
            append_metrics(
                d / "metrics.csv", [r for r in rows if r["iteration"] < done], fresh=True
            )
    else:
        states = init_states(trainer, seed_keys(seeds))
        env_steps, wall_offset, done = [0] * len(seeds), 0.0, 0
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            append_metrics(d / "metrics.csv", [], fresh=True)
    for d in dirs:
        (d / "config.json").write_text(config_json + "\n")
    # A chunk donates its states, and one buffer must not be donated twice: an initial state may
    # hold one array in two places (an observation that is the physics state, or target networks
    # that start as the networks).
    states = jax.tree.map(jnp.copy, trainer.place(states))

    bar = tqdm(total=config.iterations, initial=done, unit="it", desc=desc) if progress else None
    start, wall = time.perf_counter(), wall_offset
    while done < config.iterations:
        states, metrics = run_chunk(trainer, states, jnp.asarray(done, jnp.int32))
        metrics = jax.device_get(metrics)
        previous_wall, wall = wall, wall_offset + time.perf_counter() - start
        chunk_rows = []
        for s, d in enumerate(dirs):
            rows = []
            for j in range(config.log_interval):
                env_steps[s] += int(metrics["episode_steps"][s, j])
                row = {"iteration": done + j, "env_steps": env_steps[s]}
                # One timing per chunk; iterations inside it are spread evenly.
                fraction = (j + 1) / config.log_interval
                row["wall_s"] = previous_wall + (wall - previous_wall) * fraction
                row |= {name: metrics[name][s, j].item() for name in METRIC_COLUMNS[3:]}
                rows.append(row)
            append_metrics(d / "metrics.csv", rows)
            chunk_rows.append(rows)
        done += config.log_interval
        if bar is not None:
            bar.update(config.log_interval)
            bar.set_postfix(_progress(metrics, chunk_rows, wall - previous_wall))
        if done % config.checkpoint_interval == 0 or done == config.iterations:
            for s, (seed, d) in enumerate(zip(seeds, dirs, strict=True)):
                header = {
                    "config": config.to_dict(),
                    "seed": seed,
                    "nfn_version": nfn_version(),
                    "iteration": done,
                    "env_steps": env_steps[s],
                    "wall_s": wall,
                }
                save_checkpoint(d / "checkpoint.eqx", _seed_state(states, s), header)
        if on_chunk is not None:
            on_chunk(done)
    if bar is not None:
        bar.close()
    for d in dirs:
        plot_returns(read_metrics(d / "metrics.csv"), d / "returns.png")
    return states


def _progress(metrics: dict, chunk_rows: list[list[dict]], seconds: float) -> dict[str, str]:
    """The progress bar's postfix: steps/s of all seeds, and the last returns of seed order 0."""
    rows = chunk_rows[0]
    evals = [r["eval_return"] for r in rows if not math.isnan(r["eval_return"])]
    returns = [r["return_mean"] for r in rows if not math.isnan(r["return_mean"])]
    return {
        "steps_per_s": f"{int(np.sum(metrics['episode_steps'])) / max(seconds, 1e-9):.3g}",
        "ret": f"{returns[-1]:.1f}" if returns else "-",
        "eval": f"{evals[-1]:.1f}" if evals else "-",
    }
