"""The paper's scaled EPVF recipe for the Ant, its ablations, and machine-sized presets."""

from typing import Any

from nfn_rl.epvf._config import EPVFConfig
from nfn_rl.population import ANT_POPULATIONS, POPULATION_RECIPE
from nfn_rl.run._config import with_fields

RECIPE: dict[str, Any] = POPULATION_RECIPE | dict(multiple_policies=False)
"""The paper's best Ant setup: uniform noise U(-0.3|w|, 0.3|w|), parameters clipped to
[-0.1, 0.1] after the policy steps, policy learning rate decaying exponentially 1e-3 -> 1e-7, and
as many environments as the batch and the buffer (only fresh data)."""

# Each preset's population (task, policies per iteration, schedule, policy) is the one the ES
# baseline runs (`nfn_rl.population.ANT_POPULATIONS`); these are the critic's settings on it.
_CRITIC_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(critic_steps=4, policy_steps=4, critic_width=32, critic_depth=2),
    # envs = batch = buffer at 2048, with the levers that make the critic carry signal on a
    # CPU (docs/epvf.md, "Levers beyond the paper"; none is the paper's): antithetic pairs,
    # centred-rank targets, and the critic's linear head over the UNF features and the flat
    # parameters (depth 0) refitted in closed form by ridge regression on each fresh batch. A
    # small UNF encoder (4 channels, no layer norm, 5 Adam steps) keeps the critic cheap next
    # to the native MuJoCo rollouts (`benchmarks/epvf_throughput.py --preset cpu`).
    "cpu": dict(
        critic_steps=5,
        policy_steps=10,
        critic_width=64,
        critic_depth=0,
        critic_ridge=0.3,
        critic_targets="centered_ranks",
        antithetic=True,
        unf_channels=4,
        unf_features=32,
        unf_layer_norm=False,
    ),
    "paper": dict(critic_steps=20, policy_steps=10, critic_width=256, critic_depth=2),
}

PRESETS: dict[str, dict[str, Any]] = {
    name: ANT_POPULATIONS[name] | settings for name, settings in _CRITIC_SETTINGS.items()
}
"""The Ant presets: `"smoke"` (a test), `"cpu"` (README command 1, a 2-core CPU) and `"paper"`
(the paper's scale, for a GPU)."""

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
