"""Test configuration: x64 off by default, a persistent compile cache, and hypothesis profiles.

The package is imported under jaxtyping's import hook with beartype (see `--jaxtyping-packages`
in pyproject.toml), so every annotated shape and dtype is checked at call time.
"""

import os
import pathlib
import sys

# MuJoCo picks its OpenGL backend when imported: EGL renders offscreen on headless machines.
os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import nfn_rl  # noqa: E402

# Helper modules (strategies, reference implementations) live next to the tests; there is no
# tests/__init__.py (the PyPI package `nfn` ships a top-level `tests` package of its own).
sys.path.insert(0, str(pathlib.Path(__file__).parent))

nfn_rl.enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
