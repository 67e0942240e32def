"""One entry point for every algorithm: configs by name, trainers, training runs and loading
them back."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import jax
from jaxtyping import PyTree

from nfn_rl.baselines import ESConfig, PPOConfig, SACConfig, make_es, make_ppo, make_sac
from nfn_rl.envs import Environment, make_env
from nfn_rl.epvf import EPVFConfig, make_epvf
from nfn_rl.run import (
    CheckpointError,
    TrainConfig,
    Trainer,
    TrainState,
    load_checkpoint,
    read_header,
    run_training,
)

CONFIGS: dict[str, type[TrainConfig]] = {
    "epvf": EPVFConfig,
    "ppo": PPOConfig,
    "sac": SACConfig,
    "es": ESConfig,
}
"""The config class of each algorithm, by its `algo` name."""


def config_from_dict(fields: dict[str, Any]) -> TrainConfig:
    """The config of any algorithm from its `to_dict()` object (chosen by its `algo` entry)."""
    algo = fields.get("algo")
    if algo not in CONFIGS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[algo].from_dict(fields)


def make_trainer(config: TrainConfig, env: Environment | None = None) -> Trainer:
    """The trainer of `config`'s algorithm, on `env` or else on
    `make_env(config.env, config.horizon)`."""
    if isinstance(config, EPVFConfig):
        return make_epvf(config, env)
    if isinstance(config, ESConfig):
        return make_es(config, env)
    if env is None:
        env = make_env(config.env, config.horizon)
    if isinstance(config, PPOConfig):
        return make_ppo(config, env)
    if isinstance(config, SACConfig):
        return make_sac(config, env)
    raise TypeError(
        f"expected an EPVFConfig, ESConfig, PPOConfig or SACConfig, got {type(config).__name__}"
    )


def train_seeds(
    config: TrainConfig,
    env: Environment | None = None,
    *,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    allow_backend_change: bool = False,
) -> tuple[Trainer, PyTree]:
    """Train `config` once per seed, all seeds in one compiled program, and record each run.

    Each seed's run directory (`out_dir` for one seed, else `out_dir/seed_<s>`) gets
    `config.json`, `metrics.csv`, `checkpoint.eqx` (every `checkpoint_interval` iterations and
    at the end) and `returns.png`. `metrics.csv` has one row per iteration: `env_steps`
    (cumulative), `wall_s` (since the start of the training loop, compilation included, spread
    evenly within a chunk), `return_mean`/`return_max` over the finite returns of the
    episodes of that iteration (NaN if none), `eval_return` (the trained policy, every
    `eval_interval` iterations, else NaN), `evaluated` (1 where an evaluation ran),
    `critic_loss`, `policy_lr`, `nonfinite_returns` and `skipped_updates` (steps skipped for
    non-finite gradients). A seed's rows are the same whichever seeds train beside it.

    A directory that holds a run is refused unless `resume=True` (continue it) or
    `overwrite=True` (move its files into a `replaced_<time>` folder and start over). Every row
    carries its run's `run_id`. With `resume=True` each seed continues from its checkpoint and
    reproduces an uninterrupted run's metrics (all but `wall_s`); rows lost from `metrics.csv`
    are rebuilt by replaying the run (their `wall_s` is NaN), and a finished run is left as it
    is. The Ant's simulator is part of the run (the trainer's `config.backend` is "native" or
    "mjx", also where "auto" chose it, and `config.json` and the checkpoints record it): a
    resume on the other one is refused with a line naming both, unless
    `allow_backend_change=True`. `env` replaces the config's environment (pass it again on
    resume). `on_chunk(iteration)` is called after each chunk's metrics are written. Returns
    the trainer and the final states, stacked on a leading seed axis.
    """
    trainer = make_trainer(config, env)
    states = run_training(
        trainer,
        seeds=seeds,
        out_dir=out_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        desc=config.algo.upper(),
        on_chunk=on_chunk,
        allow_backend_change=allow_backend_change,
    )
    return trainer, states


class RunOptions(TypedDict, total=False):
    """The keyword arguments of `train_seeds` besides `seeds` and `out_dir`, with its defaults
    and meanings."""

    resume: bool
    overwrite: bool
    progress: bool
    on_chunk: Callable[[int], None] | None
    allow_backend_change: bool


def train(
    config: TrainConfig,
    env: Environment | None = None,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike,
    **options: Unpack[RunOptions],
) -> tuple[Trainer, TrainState]:
    """`train_seeds` for one seed, recorded in `out_dir` (`options` as `train_seeds` takes them:
    `resume`, `overwrite`, `progress`, `on_chunk`, `allow_backend_change`); returns the trainer
    and the final state (`trainer.policy(state)` is the trained policy)."""
    trainer, states = train_seeds(config, env, seeds=(seed,), out_dir=out_dir, **options)
    return trainer, jax.tree.map(lambda x: x[0], states)


def load_run(
    path: str | os.PathLike, env: Environment | None = None, *, allow_backend_change: bool = False
) -> tuple[Trainer, TrainState, dict[str, Any]]:
    """The trainer, state and checkpoint header of a run (its `checkpoint.eqx` or its run
    directory), of any algorithm; `trainer.policy(state)` is the trained policy, and the
    header holds the config, seed, iteration and `env_steps` of the checkpoint. An `env` on
    another simulator than the run's is refused unless `allow_backend_change=True`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.eqx"
    try:
        config = config_from_dict(read_header(path)["config"])
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: its stored config is not valid today: {error}") from None
    trainer = make_trainer(config, env)
    state, header = load_checkpoint(path, trainer, allow_backend_change=allow_backend_change)
    return trainer, state, header
