"""The paper's scaled EPVF recipe for the Ant, its ablations, and machine-sized presets."""

import dataclasses
from typing import Any

from nfn_rl._config import EPVFConfig

RECIPE: dict[str, Any] = dict(
    noise="uniform_scaled",
    noise_scale=0.3,
    weight_clip=0.1,
    policy_lr=1e-3,
    policy_lr_end=1e-7,
    policy_lr_schedule="exponential",
    perturbation_clip=None,
    multiple_policies=False,
)
"""The paper's best Ant setup: uniform noise U(-0.3|w|, 0.3|w|), parameters clipped to
[-0.1, 0.1] after the policy steps, policy learning rate decaying exponentially 1e-3 -> 1e-7, and
as many environments as the batch and the buffer (only fresh data)."""

# The Ant resets deterministically to its home pose, so one evaluation episode is exact.
PRESETS: dict[str, dict[str, Any]] = {
    # End to end in well under a minute on 2 CPU cores, compile included: used by the tests.
    "smoke": dict(
        env="ant",
        horizon=32,
        num_envs=16,
        iterations=4,
        critic_steps=4,
        policy_steps=4,
        log_interval=2,
        eval_interval=2,
        eval_episodes=1,
        checkpoint_interval=2,
        policy_hidden=(16, 16),
        critic_hidden=(32, 32),
    ),
    # About three minutes on 2 CPU cores. The quarter-cost torque variant and a 200-step horizon
    # buy enough iterations to show learning; see docs/results.md for what it reaches.
    "cpu": dict(
        env="ant-torque",
        horizon=200,
        num_envs=256,
        iterations=60,
        critic_steps=20,
        policy_steps=10,
        log_interval=5,
        eval_interval=5,
        eval_episodes=1,
        checkpoint_interval=20,
        policy_hidden=(32, 32),
        critic_hidden=(128, 128),
    ),
    # The paper's scale (4096 envs = batch = buffer, horizon 1000): for a GPU.
    "paper": dict(
        env="ant",
        horizon=1000,
        num_envs=4096,
        iterations=250,
        critic_steps=20,
        policy_steps=10,
        log_interval=5,
        eval_interval=5,
        eval_episodes=1,
        checkpoint_interval=25,
        policy_hidden=(64, 64),
        critic_hidden=(256, 256),
    ),
}

ABLATIONS: dict[str, dict[str, Any]] = {
    "best": {},
    "multiple_policies": dict(multiple_policies=True),
    "buffer_100x": dict(buffer_scale=100),
    "fixed_policy_lr": dict(policy_lr=1e-5, policy_lr_end=1e-5, policy_lr_schedule="constant"),
    "noise_scale_1.0": dict(noise_scale=1.0),
    "no_weight_clip": dict(weight_clip=None),
    # Clip each perturbation to (-0.3, 0.3) when sampling instead of clipping the parameters
    # after the policy steps.
    "clip_perturbations": dict(weight_clip=None, perturbation_clip=0.3),
    "gaussian_noise": dict(noise="gaussian", noise_scale=1.0),
}
"""Each ablation of the paper's Figure 2 (top right) as one change to the best setup."""


def ant_config(
    preset: str = "cpu",
    *,
    critic: str = "unf+params",
    ablation: str = "best",
    **overrides: Any,
) -> EPVFConfig:
    """The Ant EPVF config of a preset (`"smoke"`, `"cpu"` or `"paper"`), critic and ablation.

    The batch and the buffer equal the number of environments (the paper's recipe), except in
    the `buffer_100x` ablation. `overrides` replace any field last (e.g. `seed=3`).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    fields = {**PRESETS[preset], **RECIPE, "critic": critic}
    change = dict(ABLATIONS[ablation])
    buffer_scale = change.pop("buffer_scale", 1)
    fields |= change
    num_envs = overrides.get("num_envs", fields["num_envs"])
    fields |= dict(batch_size=num_envs, buffer_size=buffer_scale * num_envs)
    fields |= overrides
    known = {f.name for f in dataclasses.fields(EPVFConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown EPVFConfig field(s): {', '.join(unknown)}")
    return EPVFConfig(**fields)
