"""The paper's scaled EPVF recipe for the Ant, its ablations, and machine-sized presets."""

from typing import Any

from nfn_rl.envs import ANT_TASKS
from nfn_rl.epvf._config import EPVFConfig
from nfn_rl.run._config import with_fields

RECIPE: dict[str, Any] = dict(
    noise="uniform_scaled",
    noise_scale=0.3,
    weight_clip=0.1,
    policy_lr=1e-3,
    policy_lr_end=1e-7,
    policy_lr_schedule="exponential",
    perturbed_weight_clip=None,
    multiple_policies=False,
)
"""The paper's best Ant setup: uniform noise U(-0.3|w|, 0.3|w|), parameters clipped to
[-0.1, 0.1] after the policy steps, policy learning rate decaying exponentially 1e-3 -> 1e-7, and
as many environments as the batch and the buffer (only fresh data)."""

# The Ant resets deterministically to its home pose, so one evaluation episode is exact.
PRESETS: dict[str, dict[str, Any]] = {
    # End to end in well under a minute on 2 CPU cores, compile included: used by the tests.
    "smoke": dict(
        **ANT_TASKS["smoke"],
        num_envs=16,
        iterations=4,
        critic_steps=4,
        policy_steps=4,
        log_interval=2,
        eval_interval=2,
        eval_episodes=1,
        checkpoint_interval=2,
        policy_width=16,
        policy_depth=2,
        critic_width=32,
        critic_depth=2,
    ),
    # About eight minutes on 2 CPU cores (README command 1); see docs/results.md.
    "cpu": dict(
        **ANT_TASKS["cpu"],
        # The paper's regime: at least 2048 perturbed policies per iteration (envs = batch =
        # buffer). What makes it affordable on a CPU: the native MuJoCo backend, 5 critic steps
        # and a small UNF critic (4 channels, no layer norm), which keeps the critic under 30%
        # of an iteration (`benchmarks/epvf_throughput.py --preset cpu`; docs/epvf.md).
        num_envs=2048,
        # 240 rather than 120: every seed's policies keep improving past iteration 120
        # (docs/results.md).
        iterations=240,
        critic_steps=5,
        policy_steps=10,
        log_interval=5,
        eval_interval=5,
        eval_episodes=1,
        checkpoint_interval=20,
        policy_width=32,
        policy_depth=2,
        critic_width=64,
        critic_depth=2,
        unf_channels=4,
        unf_features=32,
        unf_layer_norm=False,
        # Deviation from the recipe's 1e-7: over 240 iterations 1e-3 -> 1e-7 leaves the second
        # half of the run with steps below 1e-5.
        policy_lr_end=1e-5,
    ),
    # The paper's scale (4096 envs = batch = buffer, horizon 1000): for a GPU.
    "paper": dict(
        **ANT_TASKS["paper"],
        num_envs=4096,
        iterations=250,
        critic_steps=20,
        policy_steps=10,
        log_interval=5,
        eval_interval=5,
        eval_episodes=1,
        checkpoint_interval=25,
        policy_width=64,
        policy_depth=2,
        critic_width=256,
        critic_depth=2,
    ),
}

ABLATIONS: dict[str, dict[str, Any]] = {
    "best": {},
    "multiple_policies": dict(multiple_policies=True),
    "buffer_100x": dict(buffer_scale=100),
    "fixed_policy_lr": dict(policy_lr=1e-5, policy_lr_end=1e-5, policy_lr_schedule="constant"),
    "noise_scale_1.0": dict(noise_scale=1.0),
    "no_weight_clip": dict(weight_clip=None),
    # The paper: "directly clip the perturbations of the policy parameters to (-0.3, 0.3) instead
    # of only after the gradient steps". Read as clipping the perturbed parameters (the policies
    # that are rolled out), in place of the clip after the policy steps: clipping the noise
    # itself would change nothing, since U(-0.3|w|, 0.3|w|) exceeds 0.3 only where |w| > 1.
    "clip_perturbations": dict(weight_clip=None, perturbed_weight_clip=0.3),
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
    the `buffer_100x` ablation. `overrides` replace any field last (e.g. `num_envs=1024`).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    # A preset may deviate from the recipe (the `cpu` preset's learning-rate end).
    fields = {**RECIPE, **PRESETS[preset], "critic": critic}
    change = dict(ABLATIONS[ablation])
    buffer_scale = change.pop("buffer_scale", 1)
    fields |= change
    num_envs = overrides.get("num_envs", fields["num_envs"])
    fields |= dict(batch_size=num_envs, buffer_size=buffer_scale * num_envs)
    fields |= overrides
    return with_fields(EPVFConfig, fields)
