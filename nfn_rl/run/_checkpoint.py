"""Checkpoints that prove their integrity: a JSON header line (format, algorithm config, seed,
run id, progress, and the length and sha256 of the payload), then the state serialised by
`eqx.tree_serialise_leaves`."""

import hashlib
import importlib.metadata
import io
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

from nfn_rl.run._files import replace_file

CHECKPOINT_FORMAT = "nfn_rl.checkpoint/3"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or written for another run."""


def nfn_version() -> str:
    try:
        return importlib.metadata.version("nfn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_checkpoint(path: Path, state: PyTree, header: dict[str, Any]) -> None:
    """Write the header line, then the serialised state; replaces `path` atomically and durably
    (`replace_file`: a crash before the rename leaves the previous checkpoint usable)."""
    payload = io.BytesIO()
    eqx.tree_serialise_leaves(payload, state)
    payload = payload.getvalue()
    header = {
        "format": CHECKPOINT_FORMAT,
        **header,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    data = (json.dumps(header) + "\n").encode() + payload
    replace_file(path, lambda tmp: tmp.write_bytes(data))


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    data = path.read_bytes()
    line, _, payload = data.partition(b"\n")
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an nfn_rl checkpoint in format {CHECKPOINT_FORMAT}")
    return header, payload


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint written by `save_checkpoint` (payload not verified)."""
    return _split(Path(path))[0]


def _json_normal(fields: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fields))


def load_checkpoint(
    path: str | os.PathLike, trainer, *, allow_backend_change: bool = False
) -> tuple[PyTree, dict[str, Any]]:
    """The state and header at `path`, after checking the payload's length and sha256, that it
    was written for `trainer.config`, and that the state is at the header's iteration. Every
    error names the file and the problem.

    A config that differs only in `backend` (the simulator: the checkpoint's run used one, this
    trainer another) is refused unless `allow_backend_change`: the run would go on with returns
    from another simulator."""
    path = Path(path)
    header, payload = _split(path)
    expected = header.get("payload_bytes")
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "followed by unexpected bytes"
        raise CheckpointError(
            f"{path}: payload is {problem} ({len(payload)} bytes, the header says {expected})"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"{path}: payload does not match its sha256: the file is corrupt")
    stored, given = header["config"], _json_normal(trainer.config.to_dict())
    if stored.get("algo") != given["algo"]:
        raise CheckpointError(
            f"{path} holds a {stored.get('algo')!r} run, not a {given['algo']!r} run: the "
            "algorithms differ"
        )
    # Fields added to a config class after the checkpoint was written take their defaults,
    # which reproduce the behaviour from before they existed (the convention for new fields).
    try:
        stored = _json_normal(type(trainer.config).from_dict(stored).to_dict())
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its stored config is not valid today: {error}") from None
    diff = {
        name: (stored.get(name), given.get(name))
        for name in sorted(set(stored) | set(given))
        if stored.get(name) != given.get(name)
    }
    if allow_backend_change:
        diff.pop("backend", None)
    if set(diff) == {"backend"}:
        was, now = diff["backend"]
        raise CheckpointError(
            f"{path} was trained on the {was!r} backend, and this trainer simulates with {now!r} "
            f"(EPVFConfig.backend, or 'auto' choosing otherwise on this machine): set "
            f"backend={was!r} to continue on the same simulator, or pass "
            f"allow_backend_change=True (--allow-backend-change) to continue on {now!r}"
        )
    if diff:
        raise CheckpointError(
            f"{path}: config differs from the checkpoint's (stored, given): {diff}"
        )
    like = eqx.filter_eval_shape(trainer.init, jax.random.key(0))
    try:
        state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as error:  # The payload's own format is equinox's; name the file.
        raise CheckpointError(f"{path}: the state does not deserialise: {error}") from error
    if int(state.iteration) != header["iteration"]:
        raise CheckpointError(
            f"{path}: the state is at iteration {int(state.iteration)}, the header says "
            f"{header['iteration']}"
        )
    return state, header
