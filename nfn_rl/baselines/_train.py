"""Building, training, and loading PPO/SAC runs; run directories as for EPVF."""

import os
from collections.abc import Callable
from pathlib import Path

from nfn_rl._loop import load_checkpoint, read_header, run_training
from nfn_rl.baselines._common import BaselineState, BaselineTrainer
from nfn_rl.baselines._config import BaselineConfig, PPOConfig, SACConfig
from nfn_rl.baselines._ppo import make_ppo
from nfn_rl.baselines._sac import make_sac
from nfn_rl.envs import Environment, make_env

CHECKPOINT_FORMAT = "nfn_rl.baselines.checkpoint/1"
ALGORITHMS: dict[str, type[BaselineConfig]] = {"ppo": PPOConfig, "sac": SACConfig}


def config_from_dict(fields: dict) -> BaselineConfig:
    """A `PPOConfig` or `SACConfig` from its `to_json` object (chosen by its `algo` entry)."""
    algo = fields.get("algo")
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[algo].from_dict(fields)


def make_baseline(config: BaselineConfig, env: Environment | None = None) -> BaselineTrainer:
    """The trainer for `config` on `env`, or else on `make_env(config.env, config.horizon)`."""
    if env is None:
        env = make_env(config.env, config.horizon)
    if isinstance(config, PPOConfig):
        return make_ppo(config, env)
    if isinstance(config, SACConfig):
        return make_sac(config, env)
    raise TypeError(f"expected a PPOConfig or SACConfig, got {type(config).__name__}")


def train(
    config: BaselineConfig,
    env: Environment | None = None,
    *,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[BaselineTrainer, BaselineState]:
    """Train PPO or SAC and record the run in `out_dir`, like `nfn_rl.train` does for EPVF.

    Writes `config.json` (with an `algo` entry), `metrics.csv` with the EPVF columns,
    `checkpoint.eqx` and `returns.png`. One row per iteration: `env_steps` (cumulative),
    `wall_s`, `return_mean`/`return_max` over the stochastic training episodes that ended in that
    iteration (NaN if none did), `eval_return` (the deterministic policy, every
    `eval_interval` iterations, else NaN), `critic_loss` (value loss for PPO, Q loss for SAC; NaN
    while SAC waits for `min_replay`), `policy_lr`, `nonfinite_returns` and `skipped_updates`
    (non-finite gradients). `resume=True` continues from the checkpoint.
    Returns the trainer and the final state (`trainer.policy(state)` is the trained policy).
    """
    trainer = make_baseline(config, env)
    state = run_training(
        trainer,
        out_dir=out_dir,
        checkpoint_format=CHECKPOINT_FORMAT,
        config_json=config.to_json(),
        parse_config=config_from_dict,
        resume=resume,
        progress=progress,
        desc=config.algo.upper(),
        on_chunk=on_chunk,
    )
    return trainer, state


def load_run(
    path: str | os.PathLike, env: Environment | None = None
) -> tuple[BaselineTrainer, BaselineState]:
    """The trainer and state of a baseline checkpoint (a `checkpoint.eqx` or its run directory);
    `trainer.policy(state)` is the trained deterministic policy."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.eqx"
    header = read_header(path, checkpoint_format=CHECKPOINT_FORMAT)
    config = config_from_dict(header["config"])
    trainer = make_baseline(config, env)
    state, _ = load_checkpoint(
        path, trainer, checkpoint_format=CHECKPOINT_FORMAT, parse_config=config_from_dict
    )
    return trainer, state
