"""PPO and SAC settings for the Ant at the EPVF presets' scales."""

import dataclasses
from typing import Any

from nfn_rl._presets import PRESETS as EPVF_PRESETS
from nfn_rl.baselines._config import BaselineConfig
from nfn_rl.baselines._train import ALGORITHMS

# Each preset runs on the EPVF preset's environment and horizon, so runs compare directly.
BASELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # End to end in well under a minute on 2 CPU cores, compile included: used by the tests.
    "smoke": {
        "ppo": dict(
            num_envs=16,
            unroll_length=8,
            iterations=4,
            num_minibatches=2,
            update_epochs=2,
            policy_hidden=(16, 16),
            value_hidden=(32, 32),
            log_interval=2,
            eval_interval=2,
            eval_episodes=1,
            checkpoint_interval=2,
        ),
        "sac": dict(
            num_envs=16,
            unroll_length=2,
            iterations=4,
            batch_size=32,
            grad_updates=2,
            min_replay=32,
            policy_hidden=(16, 16),
            value_hidden=(32, 32),
            log_interval=2,
            eval_interval=2,
            eval_episodes=1,
            checkpoint_interval=2,
        ),
    },
    # About five minutes each on 2 CPU cores (measured: PPO 277 s, SAC 331 s); see
    # docs/results.md for what they reach.
    "cpu": {
        "ppo": dict(
            num_envs=256,
            unroll_length=20,
            iterations=600,
            num_minibatches=8,
            update_epochs=4,
            learning_rate=3e-4,
            entropy_cost=1e-2,
            discount=0.97,
            reward_scale=10.0,
            policy_hidden=(32, 32),
            value_hidden=(128, 128),
            log_interval=20,
            eval_interval=20,
            eval_episodes=1,
            checkpoint_interval=100,
        ),
        "sac": dict(
            num_envs=64,
            unroll_length=1,
            iterations=4000,
            batch_size=256,
            grad_updates=4,
            min_replay=2048,
            replay_size=200_000,
            learning_rate=6e-4,
            discount=0.97,
            reward_scale=10.0,
            policy_hidden=(64, 64),
            value_hidden=(128, 128),
            log_interval=200,
            eval_interval=200,
            eval_episodes=1,
            checkpoint_interval=1000,
        ),
    },
    # Brax's published Ant settings for both algorithms (50M PPO and 5M SAC env steps): for a GPU.
    "paper": {
        "ppo": dict(
            num_envs=4096,
            unroll_length=5,
            iterations=2400,
            num_minibatches=32,
            update_epochs=4,
            learning_rate=3e-4,
            entropy_cost=1e-2,
            discount=0.97,
            reward_scale=10.0,
            policy_hidden=(32, 32, 32, 32),
            value_hidden=(256, 256, 256, 256, 256),
            log_interval=40,
            eval_interval=40,
            eval_episodes=1,
            checkpoint_interval=400,
        ),
        "sac": dict(
            num_envs=128,
            unroll_length=1,
            iterations=39_000,
            batch_size=512,
            grad_updates=64,
            min_replay=8192,
            replay_size=1_000_000,
            learning_rate=6e-4,
            discount=0.97,
            reward_scale=10.0,
            normalize_observations=True,
            policy_hidden=(256, 256),
            value_hidden=(256, 256),
            log_interval=1000,
            eval_interval=1000,
            eval_episodes=1,
            checkpoint_interval=5000,
        ),
    },
}


def baseline_config(algo: str, preset: str = "cpu", **overrides: Any) -> BaselineConfig:
    """The Ant config of `algo` (`"ppo"` or `"sac"`) at a preset (`"smoke"`, `"cpu"` or
    `"paper"`); `overrides` replace any field last (e.g. `seed=3`)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(ALGORITHMS)}")
    if preset not in BASELINE_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(BASELINE_PRESETS)}")
    cls = ALGORITHMS[algo]
    epvf = EPVF_PRESETS[preset]
    fields = {"env": epvf["env"], "horizon": epvf["horizon"], **BASELINE_PRESETS[preset][algo]}
    fields |= overrides
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**fields)
