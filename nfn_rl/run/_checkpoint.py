"""Checkpoints: a JSON header line (format, algorithm config, seed, progress), then the state
serialised by `eqx.tree_serialise_leaves`."""

import importlib.metadata
import io
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

CHECKPOINT_FORMAT = "nfn_rl.checkpoint/2"


def nfn_version() -> str:
    try:
        return importlib.metadata.version("nfn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_checkpoint(path: Path, state: PyTree, header: dict[str, Any]) -> None:
    """Write the header line, then the serialised state; atomically replaces `path`."""
    buffer = io.BytesIO()
    buffer.write((json.dumps({"format": CHECKPOINT_FORMAT, **header}) + "\n").encode())
    eqx.tree_serialise_leaves(buffer, state)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with path.open("rb") as f:
        try:
            header = json.loads(f.readline())
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an nfn_rl checkpoint in format {CHECKPOINT_FORMAT}")
    return header


def _json_normal(fields: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fields))


def load_checkpoint(path: str | os.PathLike, trainer) -> tuple[PyTree, dict[str, Any]]:
    """The state and header at `path`, after checking it was written for `trainer.config`."""
    path = Path(path)
    header = read_header(path)
    stored, given = header["config"], _json_normal(trainer.config.to_dict())
    if stored.get("algo") != given["algo"]:
        raise ValueError(
            f"{path} holds a {stored.get('algo')!r} run, not a {given['algo']!r} run: the "
            "algorithms differ"
        )
    if stored != given:
        diff = {
            name: (stored.get(name), given.get(name))
            for name in sorted(set(stored) | set(given))
            if stored.get(name) != given.get(name)
        }
        raise ValueError(f"{path}: config differs from the checkpoint's (stored, given): {diff}")
    like = eqx.filter_eval_shape(trainer.init, jax.random.key(0))
    with path.open("rb") as f:
        f.readline()
        state = eqx.tree_deserialise_leaves(f, like)
    return state, header
