"""The host loop every trainer shares: all seeds in one compiled program, jitted chunks of
iterations, one run directory per seed (`config.json`, `metrics.csv`, `checkpoint.eqx`,
`returns.png`), resume, and a progress bar.

A run directory holds one run: a fresh run refuses a directory that holds one, every metrics
row carries its run's id, and a resume keeps exactly that run's rows, rebuilding missing ones by
replaying the run from its start.

Across processes (`nfn_rl.initialize_distributed`) every process runs this loop alike on the
one global state; only process 0 writes the files, each one atomically. The run directory must
be on a file system every process sees: a resume reads the checkpoint in every process."""

import datetime
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PyTree
from tqdm.auto import tqdm

from nfn_rl.run._checkpoint import load_checkpoint, nfn_version, save_checkpoint
from nfn_rl.run._distributed import barrier, host_values, is_main_process, new_run_ids
from nfn_rl.run._files import replace_file
from nfn_rl.run._report import METRIC_COLUMNS, append_metrics, plot_returns, read_metrics
from nfn_rl.run._trainer import Trainer

RUN_FILES = (
    "config.json",
    "metrics.csv",
    "checkpoint.eqx",
    "returns.png",
    "config.json.tmp",
    "metrics.csv.tmp",
    "checkpoint.eqx.tmp",
    "returns.png.tmp",
)
"""The files a run writes in its directory (each through its `.tmp`, then renamed)."""

# The columns the trainer's metrics fill (the host adds the run id, iteration, steps and time).
_TRAINER_COLUMNS = METRIC_COLUMNS[4:]


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (it holds another run, or rows are lost)."""


def run_dirs(out_dir: str | os.PathLike, seeds: Sequence[int]) -> list[Path]:
    """The run directory of each seed: `out_dir` itself for one seed, else `out_dir/seed_<s>`."""
    out = Path(out_dir)
    if len(seeds) == 1:
        return [out]
    return [out / f"seed_{seed}" for seed in seeds]


def holds_run(path: Path) -> bool:
    """Whether `path` holds (part of) a run."""
    return any((path / name).exists() for name in RUN_FILES)


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
    # On the host: `Trainer.place` then puts the stack on every process's devices.
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _seed_state(states: PyTree, index: int) -> PyTree:
    """Seed number `index` of host `states` (see `host_values`)."""
    return jax.tree.map(lambda x: x[index], states)


def _fresh_states(trainer: Trainer, seeds: tuple[int, ...]) -> PyTree:
    # A chunk donates its states, and one buffer must not be donated twice: an initial state may
    # hold one array in two places (an observation that is the physics state, or target networks
    # that start as the networks).
    states = init_states(trainer, seed_keys(seeds))
    return jax.tree.map(jnp.copy, trainer.place(states))


def _rows(metrics: dict, index: int, start: int, run_id: str, env_steps: int, walls) -> list[dict]:
    """The metrics rows of seed number `index` for a chunk that began at iteration `start`."""
    rows = []
    for j, wall in enumerate(walls):
        env_steps += int(metrics["episode_steps"][index, j])
        row = {"run_id": run_id, "iteration": start + j, "env_steps": env_steps, "wall_s": wall}
        row |= {name: metrics[name][index, j].item() for name in _TRAINER_COLUMNS}
        rows.append(row)
    return rows


def _move_aside(path: Path) -> Path:
    """Move the run files in `path` into a new `path/replaced_<UTC time>/`; returns it."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path / f"replaced_{stamp}"
    aside.mkdir()
    for name in RUN_FILES:
        if (path / name).exists():
            os.replace(path / name, aside / name)
    return aside


def _kept_rows(path: Path, run_id: str, done: int) -> list[dict]:
    """The rows of run `run_id` in `path/metrics.csv` before iteration `done`, as long as they
    form the contiguous prefix 0, 1, ...; what comes after a gap is dropped."""
    rows = [
        r
        for r in read_metrics(path / "metrics.csv", drop_incomplete=True)
        if r["run_id"] == run_id and r["iteration"] < done
    ]
    kept = []
    for row in rows:
        if row["iteration"] != len(kept):
            break
        kept.append(row)
    return kept


def _replay_rows(trainer, seeds, run_ids, done, loaded_states) -> list[list[dict]]:
    """Every seed's rows of iterations `[0, done)`, rebuilt by training again from the start
    (training is deterministic); `wall_s` is NaN, the lost time. Raises unless the replay ends
    bitwise at the checkpoints' states."""
    config = trainer.config
    states = _fresh_states(trainer, seeds)
    rows = [[] for _ in seeds]
    env_steps = [0] * len(seeds)
    nan_walls = [math.nan] * config.log_interval
    for start in range(0, done, config.log_interval):
        states, metrics = run_chunk(trainer, states, jnp.asarray(start, jnp.int32))
        metrics = host_values(metrics)
        for s, run_id in enumerate(run_ids):
            chunk = _rows(metrics, s, start, run_id, env_steps[s], nan_walls)
            env_steps[s] = chunk[-1]["env_steps"]
            rows[s] += chunk
    replayed, stored = host_values((states, loaded_states))
    for a, b in zip(jax.tree.leaves(replayed), jax.tree.leaves(stored), strict=True):
        if not np.array_equal(a, b):
            raise RunDirectoryError(
                "metrics rows are missing and replaying the run does not reproduce its "
                "checkpoint (another code or library version?), so they cannot be rebuilt; "
                "start over with overwrite=True (--overwrite)"
            )
    return rows


def run_training(
    trainer: Trainer,
    *,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    resume: bool,
    progress: bool,
    desc: str,
    overwrite: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    allow_backend_change: bool = False,
) -> PyTree:
    """Train every seed from scratch (or from its checkpoint with `resume`) to
    `config.iterations` in one compiled program, recording each seed's run in its directory
    (`run_dirs`); returns the final states, stacked on a leading seed axis.

    A fresh run refuses a directory that holds a run, unless `overwrite` (which moves that
    run's files into a `replaced_<time>` folder inside it). A resume keeps the rows of the
    checkpoint's run up to the checkpoint and rebuilds any that are missing by replaying the
    run from its start; a finished run resumed trains nothing and loses nothing. A resume whose
    trainer simulates with another backend than the checkpoint's is refused unless
    `allow_backend_change` (`load_checkpoint`). A seed's
    metrics and state do not depend on which other seeds train beside it.

    In a multi-process run every process calls this alike; process 0 alone writes the files
    (and shows the progress bar), and every process checks the run directory before it does.
    """
    config = trainer.config
    seeds = _check_seeds(seeds)
    dirs = run_dirs(out_dir, seeds)
    config_json = config.to_json()
    writer = is_main_process()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue a run or replace it")
    if resume:
        loaded = [
            load_checkpoint(
                d / "checkpoint.eqx", trainer, allow_backend_change=allow_backend_change
            )
            for d in dirs
        ]
        for (_, header), seed, d in zip(loaded, seeds, dirs, strict=True):
            if header["seed"] != seed:
                raise RunDirectoryError(
                    f"{d / 'checkpoint.eqx'} holds seed {header['seed']}, not seed {seed}"
                )
        iterations = {header["iteration"] for _, header in loaded}
        if len(iterations) > 1:
            raise RunDirectoryError(
                f"the seeds' checkpoints are at different iterations {sorted(iterations)}; "
                "resume them separately"
            )
        done = iterations.pop()
        states = trainer.place(_stack([state for state, _ in loaded]))
        run_ids = [header["run_id"] for _, header in loaded]
        env_steps = [header["env_steps"] for _, header in loaded]
        wall_offset = max(header["wall_s"] for _, header in loaded)
        kept = [_kept_rows(d, run_id, done) for d, run_id in zip(dirs, run_ids, strict=True)]
        # Every process has read the files before process 0 rewrites them.
        barrier("nfn_rl.run_training.resume_read")
        if any(len(rows) < done for rows in kept):
            kept = _replay_rows(trainer, seeds, run_ids, done, states)
        if writer:
            for d, rows in zip(dirs, kept, strict=True):
                append_metrics(d / "metrics.csv", rows, fresh=True)
        if done == config.iterations:
            if writer:
                for d in dirs:
                    if not (d / "returns.png").is_file():
                        plot_returns(read_metrics(d / "metrics.csv"), d / "returns.png")
            barrier("nfn_rl.run_training.written")
            return states
        states = jax.tree.map(jnp.copy, states)
    else:
        for d in dirs:
            if holds_run(d) and not overwrite:
                raise RunDirectoryError(
                    f"{d} holds a run already: resume it (resume=True, --resume) or replace "
                    "it (overwrite=True, --overwrite)"
                )
        # Every process has checked the directories before process 0 changes them.
        barrier("nfn_rl.run_training.fresh_checked")
        if writer:
            for d in dirs:
                if holds_run(d):
                    _move_aside(d)
                d.mkdir(parents=True, exist_ok=True)
                append_metrics(d / "metrics.csv", [], fresh=True)
        states = _fresh_states(trainer, seeds)
        # One run id for all processes: process 0's.
        run_ids = new_run_ids(len(seeds))
        env_steps, wall_offset, done = [0] * len(seeds), 0.0, 0
    if writer:
        for d in dirs:
            replace_file(d / "config.json", lambda tmp: tmp.write_text(config_json + "\n"))

    bar = None
    if progress and writer:
        bar = tqdm(total=config.iterations, initial=done, unit="it", desc=desc)
    start, wall = time.perf_counter(), wall_offset
    warned = False
    while done < config.iterations:
        states, metrics = run_chunk(trainer, states, jnp.asarray(done, jnp.int32))
        metrics = host_values(metrics)
        previous_wall, wall = wall, wall_offset + time.perf_counter() - start
        # One timing per chunk; iterations inside it are spread evenly.
        walls = [
            previous_wall + (wall - previous_wall) * (j + 1) / config.log_interval
            for j in range(config.log_interval)
        ]
        chunk_rows = []
        for s, d in enumerate(dirs):
            rows = _rows(metrics, s, done, run_ids[s], env_steps[s], walls)
            env_steps[s] = rows[-1]["env_steps"]
            if writer:
                append_metrics(d / "metrics.csv", rows)
            chunk_rows.append(rows)
        if writer and not warned and _critic_never_stepped(metrics):
            warned = True
            warnings.warn(
                f"{desc}: every critic step of iterations {done}-{done + config.log_interval - 1}"
                " was skipped for a non-finite loss or gradient: the critic is not learning "
                "(check the rewards and the learning rates)",
                RuntimeWarning,
                stacklevel=2,
            )
        done += config.log_interval
        if bar is not None:
            bar.update(config.log_interval)
            bar.set_postfix(_progress(metrics, chunk_rows, wall - previous_wall))
        if done % config.checkpoint_interval == 0 or done == config.iterations:
            host_states = host_values(states)
            for s, (seed, d) in enumerate(zip(seeds, dirs, strict=True)):
                header = {
                    "config": config.to_dict(),
                    "seed": seed,
                    # `wall_s` is the time of all the seeds that trained in the one program.
                    "trained_with_seeds": list(seeds),
                    "run_id": run_ids[s],
                    "nfn_version": nfn_version(),
                    "iteration": done,
                    "env_steps": env_steps[s],
                    "wall_s": wall,
                }
                if writer:
                    save_checkpoint(d / "checkpoint.eqx", _seed_state(host_states, s), header)
        if on_chunk is not None:
            on_chunk(done)
    if bar is not None:
        bar.close()
    if writer:
        for d in dirs:
            plot_returns(read_metrics(d / "metrics.csv"), d / "returns.png")
    # No process returns (and perhaps reads the files) before process 0 has written them.
    barrier("nfn_rl.run_training.written")
    return states


def _critic_never_stepped(metrics: dict) -> bool:
    """Whether some seed's critic had no finite step in the whole chunk: its loss is NaN on
    every iteration while steps were skipped (a NaN loss alone also means "not yet updating")."""
    loss_nan = np.all(np.isnan(metrics["critic_loss"]), axis=1)
    skipped = np.all(metrics["skipped_updates"] > 0, axis=1)
    return bool(np.any(loss_nan & skipped))


def _progress(metrics: dict, chunk_rows: list[list[dict]], seconds: float) -> dict[str, str]:
    """The progress bar's postfix: steps/s of all seeds, and the last returns of the first (with
    its critic's unseen R^2 and ES cosine, where it has a critic of policies)."""
    rows = chunk_rows[0]
    evals = [r["eval_return"] for r in rows if r["evaluated"]]
    returns = [r["return_mean"] for r in rows if not math.isnan(r["return_mean"])]
    postfix = {
        "steps_per_s": f"{int(np.sum(metrics['episode_steps'])) / max(seconds, 1e-9):.3g}",
        "ret": f"{returns[-1]:.1f}" if returns else "-",
        "eval": f"{evals[-1]:.1f}" if evals else "-",
    }
    for name, short in (("critic_r2_unseen", "r2"), ("critic_es_cosine", "es_cos")):
        if not math.isnan(rows[-1][name]):
            postfix[short] = f"{rows[-1][name]:.3f}"
    return postfix
