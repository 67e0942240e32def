"""The persistent XLA compilation cache every script of the project turns on."""

import os
from pathlib import Path

import jax


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep XLA compilations on disk, so that a second run of the same config skips most of
    its compilation; returns the cache directory.

    `path` defaults to `$JAX_COMPILATION_CACHE_DIR`, else `~/.cache/nfn/jax`.
    """
    if path is None:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR", Path.home() / ".cache/nfn/jax")
    jax.config.update("jax_compilation_cache_dir", str(path))
    return Path(path)
