"""The host side of training, shared by EPVF and the baselines: jitted chunks of iterations,
`metrics.csv`, checkpoints (a JSON header line, then `eqx.tree_serialise_leaves`), resume, a
progress bar and the returns plot."""

import dataclasses
import importlib.metadata
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree
from tqdm.auto import tqdm

from nfn_rl._report import METRIC_COLUMNS, append_metrics, plot_returns, read_metrics


@runtime_checkable
class Trainer(Protocol):
    """What the loop needs of a trainer: a config with `iterations`, `log_interval` and
    `checkpoint_interval`, `init()`, `place(state)` (the state committed to the devices it
    trains on, laid out as `run_chunk` returns it), and a pure `run_chunk(state)` returning the
    state and per-iteration metrics (`episode_steps` and `METRIC_COLUMNS[3:]`, leading
    iteration axis)."""

    config: Any

    def init(self) -> PyTree: ...

    def place(self, state: PyTree) -> PyTree: ...

    def run_chunk(self, state: PyTree) -> tuple[PyTree, dict]: ...


def nfn_version() -> str:
    try:
        return importlib.metadata.version("nfn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_checkpoint(path: Path, state: PyTree, header: dict) -> None:
    """Write a JSON header line, then the serialised state; atomically replaces `path`."""
    buffer = io.BytesIO()
    buffer.write((json.dumps(header) + "\n").encode())
    eqx.tree_serialise_leaves(buffer, state)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def read_header(path: Path, *, checkpoint_format: str) -> dict:
    """The JSON header of a checkpoint written by `save_checkpoint` in `checkpoint_format`."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with path.open("rb") as f:
        try:
            header = json.loads(f.readline())
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict) or header.get("format") != checkpoint_format:
        raise ValueError(f"{path} is not a checkpoint in format {checkpoint_format}")
    return header


def load_checkpoint(
    path: Path,
    trainer: Trainer,
    *,
    checkpoint_format: str,
    parse_config: Callable[[dict], Any],
) -> tuple[PyTree, dict]:
    """The state and header at `path`, after checking it was written for `trainer.config`
    (`parse_config` turns the header's config back into a config object)."""
    header = read_header(path, checkpoint_format=checkpoint_format)
    stored_config = parse_config(header["config"])
    if stored_config != trainer.config:
        diff = {
            field.name: (getattr(stored_config, field.name), getattr(trainer.config, field.name))
            for field in dataclasses.fields(trainer.config)
            if getattr(stored_config, field.name, None) != getattr(trainer.config, field.name)
        }
        raise ValueError(f"config differs from the checkpoint's (stored, given): {diff}")
    with path.open("rb") as f:
        f.readline()
        state = eqx.tree_deserialise_leaves(f, eqx.filter_eval_shape(trainer.init))
    return state, header


@eqx.filter_jit(donate="all-except-first")
def run_chunk(trainer: Trainer, state: PyTree) -> tuple[PyTree, dict]:
    """`trainer.run_chunk`, jitted; `state` is donated."""
    return trainer.run_chunk(state)


def run_training(
    trainer: Trainer,
    *,
    out_dir: str | os.PathLike,
    checkpoint_format: str,
    config_json: str,
    parse_config: Callable[[dict], Any],
    resume: bool,
    progress: bool,
    desc: str,
    on_chunk: Callable[[int], None] | None = None,
) -> PyTree:
    """Train `trainer` from scratch (or from `out_dir/checkpoint.eqx` with `resume`) to
    `config.iterations`, recording the run in `out_dir`; returns the final state.

    `parse_config(header_config)` turns a checkpoint header's config back into a config object
    for the resume check.
    """
    config = trainer.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.eqx"
    metrics_path = out / "metrics.csv"
    if resume:
        state, header = load_checkpoint(
            checkpoint, trainer, checkpoint_format=checkpoint_format, parse_config=parse_config
        )
        env_steps, wall_offset = header["env_steps"], header["wall_s"]
        # Rows written after the checkpoint belong to the lost part of the run.
        rows = read_metrics(metrics_path, drop_incomplete=True)
        rows = [r for r in rows if r["iteration"] < header["iteration"]]
        append_metrics(metrics_path, rows, fresh=True)
    else:
        state, env_steps, wall_offset = trainer.init(), 0, 0.0
        append_metrics(metrics_path, [], fresh=True)
    (out / "config.json").write_text(config_json + "\n")
    # A chunk donates its state, and one buffer must not be donated twice: an initial state may
    # hold one array in two places (an observation that is the physics state, or target networks
    # that start as the networks).
    state = jax.tree.map(jnp.copy, trainer.place(state))

    done = int(state.iteration)
    bar = tqdm(total=config.iterations, initial=done, unit="it", desc=desc) if progress else None
    start, wall = time.perf_counter(), wall_offset
    while done < config.iterations:
        state, metrics = run_chunk(trainer, state)
        metrics = jax.device_get(metrics)
        previous_wall, wall = wall, wall_offset + time.perf_counter() - start
        rows = []
        for j in range(config.log_interval):
            env_steps += int(metrics["episode_steps"][j])
            row = {"iteration": done + j, "env_steps": env_steps}
            # One timing per chunk; iterations inside it are spread evenly.
            row["wall_s"] = previous_wall + (wall - previous_wall) * (j + 1) / config.log_interval
            row |= {name: metrics[name][j].item() for name in METRIC_COLUMNS[3:]}
            rows.append(row)
        append_metrics(metrics_path, rows)
        chunk_steps = int(metrics["episode_steps"].sum())
        done += config.log_interval
        if bar is not None:
            bar.update(config.log_interval)
            evals = [r["eval_return"] for r in rows if not math.isnan(r["eval_return"])]
            returns = [r["return_mean"] for r in rows if not math.isnan(r["return_mean"])]
            bar.set_postfix(
                steps_per_s=f"{chunk_steps / max(wall - previous_wall, 1e-9):.3g}",
                ret=f"{returns[-1]:.1f}" if returns else "-",
                eval=f"{evals[-1]:.1f}" if evals else "-",
            )
        if done % config.checkpoint_interval == 0 or done == config.iterations:
            header = {
                "format": checkpoint_format,
                "config": json.loads(config_json),
                "nfn_version": nfn_version(),
                "iteration": done,
                "env_steps": env_steps,
                "wall_s": wall,
            }
            save_checkpoint(checkpoint, state, header)
        if on_chunk is not None:
            on_chunk(done)
    if bar is not None:
        bar.close()
    plot_returns(read_metrics(metrics_path), out / "returns.png")
    return state
