"""Test configuration: x64 off by default, a persistent compile cache, and hypothesis profiles.

The package is imported under jaxtyping's import hook with beartype (see `--jaxtyping-packages`
in pyproject.toml), so every annotated shape and dtype is checked at call time.
"""

import os
import pathlib
import sys

# MuJoCo picks its OpenGL backend when imported: EGL renders offscreen on headless machines.
os.environ.setdefault("MUJOCO_GL", "egl")
# The suite's programs are small and run once, so compiling them is most of its time: XLA's
# backend optimisations off took a third off the CPU time of an Ant smoke run with a cold cache
# (47 -> 34 s, the same result). Set before jax starts; the tests' subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

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

# The tests that run examples or several processes take 20-80 s each; the rest take seconds.
# Collected first, they start first, and with `--dist worksteal` (the README's test command) the
# other worker's short tests fill the end instead of one long test running alone.
LONG_RUNNING_FILES = (
    "test_multiprocess.py",
    "test_inr_example.py",
    "test_ant_baselines.py",
    "test_zoo_generalization_example.py",
    "test_ant_epvf.py",
    "test_run_dirs.py",
    "test_baselines.py",
    "test_trainer_design.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONG_RUNNING_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
