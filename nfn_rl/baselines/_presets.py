"""PPO, SAC and ES settings for the Ant at the EPVF presets' scales."""

from typing import Any

from nfn_rl.baselines._config import PPOConfig, SACConfig
from nfn_rl.baselines._es import ESConfig
from nfn_rl.envs import ANT_TASKS
from nfn_rl.population import population_fields
from nfn_rl.run._config import TrainConfig, schedule, with_fields

ALGORITHMS: dict[str, type[TrainConfig]] = {"ppo": PPOConfig, "sac": SACConfig, "es": ESConfig}

ES_SETTINGS: dict[str, Any] = dict(antithetic=True, policy_lr=1e-2, policy_lr_end=1e-4)
"""What ES changes in an EPVF preset's population, policy and schedule: antithetic pairs and
one Adam step per iteration at 1e-2 decaying to 1e-4 (EPVF takes `policy_steps` steps at its
own rates)."""


def _networks(policy: tuple[int, int], value: tuple[int, int]) -> dict[str, int]:
    """The (width, depth) of the policy and value (PPO) or Q (SAC) MLPs."""
    return dict(
        policy_width=policy[0], policy_depth=policy[1], value_width=value[0], value_depth=value[1]
    )


# Brax's Ant settings, which the `cpu` and `paper` presets of each algorithm share.
_BRAX_ANT = {
    "ppo": dict(learning_rate=3e-4, entropy_cost=1e-2, discount=0.97, reward_scale=10.0),
    "sac": dict(learning_rate=6e-4, discount=0.97, reward_scale=10.0),
}

# Each preset runs on the Ant task of its name (`nfn_rl.envs.ANT_TASKS`), as EPVF's does, so runs
# compare directly.
BASELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # End to end in well under a minute on 2 CPU cores, compile included: used by the tests.
    "smoke": {
        "ppo": dict(num_envs=16, unroll_length=8, num_minibatches=2, update_epochs=2)
        | _networks(policy=(16, 2), value=(32, 2))
        | schedule(iterations=4, log_interval=2, checkpoint_interval=2),
        "sac": dict(num_envs=16, unroll_length=2, batch_size=32, grad_updates=2, min_replay=32)
        | _networks(policy=(16, 2), value=(32, 2))
        | schedule(iterations=4, log_interval=2, checkpoint_interval=2),
    },
    # About five minutes each on 2 CPU cores (measured: PPO 277 s, SAC 331 s); see
    # docs/results.md for what they reach.
    "cpu": {
        "ppo": _BRAX_ANT["ppo"]
        | dict(num_envs=256, unroll_length=20, num_minibatches=8, update_epochs=4)
        | _networks(policy=(32, 2), value=(128, 2))
        | schedule(iterations=600, log_interval=20, checkpoint_interval=100),
        "sac": _BRAX_ANT["sac"]
        | dict(num_envs=64, unroll_length=1, batch_size=256, grad_updates=4)
        | dict(min_replay=2048, replay_size=200_000)
        | _networks(policy=(64, 2), value=(128, 2))
        | schedule(iterations=4000, log_interval=200, checkpoint_interval=1000),
    },
    # Brax's published Ant settings for both algorithms (50M PPO and 5M SAC env steps): for a GPU.
    # PPO collects 16 unrolls of 5 steps from 4096 envs (327,680 transitions) per update, in 32
    # minibatches of 10,240; 152 updates are 49.8M env steps.
    "paper": {
        "ppo": _BRAX_ANT["ppo"]
        | dict(num_envs=4096, unroll_length=5, unrolls_per_update=16)
        | dict(num_minibatches=32, update_epochs=4)
        | _networks(policy=(32, 4), value=(256, 5))
        | schedule(iterations=152, log_interval=8, checkpoint_interval=40),
        "sac": _BRAX_ANT["sac"]
        | dict(num_envs=128, unroll_length=1, batch_size=512, grad_updates=64)
        | dict(min_replay=8192, replay_size=1_000_000, normalize_observations=True)
        | _networks(policy=(256, 2), value=(256, 2))
        | schedule(iterations=39_000, log_interval=1000, checkpoint_interval=5000),
    },
}


def es_fields(preset: str) -> dict[str, Any]:
    """The ES fields of a preset: the population EPVF's preset of that name rolls out
    (`nfn_rl.population.population_fields`), changed by `ES_SETTINGS`."""
    return population_fields(preset) | ES_SETTINGS


def baseline_config(algo: str, preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """The Ant config of `algo` (`"ppo"`, `"sac"` or `"es"`) at a preset (`"smoke"`, `"cpu"`
    or `"paper"`); `overrides` replace any field last (e.g. `num_envs=512`). ES runs the EPVF
    preset's populations (`es_fields`)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(ALGORITHMS)}")
    if preset not in BASELINE_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(BASELINE_PRESETS)}")
    if algo == "es":
        fields = es_fields(preset)
    else:
        fields = {**ANT_TASKS[preset], **BASELINE_PRESETS[preset][algo]}
    return with_fields(ALGORITHMS[algo], fields | overrides)
