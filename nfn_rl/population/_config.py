"""The configuration every method that learns from perturbed policies shares."""

import dataclasses
from typing import ClassVar

from nfn_rl.population._perturb import NOISES
from nfn_rl.run._config import (
    TrainConfig,
    check_bool,
    check_choice,
    check_float,
    check_int,
    fail,
)

SCHEDULES = ("constant", "exponential")
BACKENDS = ("auto", "mjx", "native")


@dataclasses.dataclass(frozen=True)
class PerturbationConfig(TrainConfig):
    """What every method that learns from perturbed policies shares (EPVF, and the ES
    baseline `nfn_rl.baselines.ESConfig`): the policy, how it is perturbed and rolled out, and
    the policy optimiser's schedule. Two methods with the same values of these fields roll out
    the same populations.

    Attributes:
        num_envs: environments per iteration = perturbed policies rolled out per iteration (M).
        antithetic: perturb in pairs theta + delta, theta - delta (the first half of the
            population and its mirror image; `num_envs` must be even). Off in the paper.
        noise: "gaussian" (N(0, noise_scale^2)) or "uniform_scaled" (U(-s|w|, s|w|)).
        noise_scale: sigma of the Gaussian, or s of the scaled uniform noise.
        perturbed_weight_clip: clip the parameters of every perturbed policy (the policies that
            are rolled out) to (-c, c); None = off. The paper's `clip_perturbations` ablation
            uses this in place of `weight_clip`.
        weight_clip: clip the policy parameters to (-c, c) at initialisation and after the
            policy steps; None = off.
        policy_lr: policy learning rate (at the first iteration).
        policy_lr_end: policy learning rate at the last iteration (exponential schedule only).
        policy_lr_schedule: "constant" or "exponential" (from `policy_lr` to `policy_lr_end`).
        weight_decay: decoupled (AdamW) weight decay of the policy optimiser.
        policy_width: width of the policy MLP's hidden layers (tanh).
        policy_depth: number of hidden layers of the policy MLP.
        observation_normalization: policies act on ``(obs - mean) / std`` with the running
            moments of every observation the rollouts have seen, updated after each iteration
            (`nfn_rl.population.ObservationNormalizer`; ARS and PSSVF use it). Off in the paper.
        reward_shift: subtracted from every step's reward in the returns the method learns
            from, i.e. `return - reward_shift * episode length`: ARS's `shift`, which removes a
            survival bonus (1 per step for Hopper, Walker2d and Ant) so that standing still is
            no longer worth a full episode's bonus. The metrics and evaluations report the
            environment's own returns. 0 (off) in the paper.
        backend: how the Ant's episodes are simulated: "mjx" (jitted MJX, for accelerators),
            "native" (MuJoCo's C engine on the host's threads, `nfn_rl.envs.NativeAnt`), or
            "auto": native when JAX runs on one CPU device (per process), MJX otherwise. Other
            environments are JAX code and ignore it ("native" is refused for them).
    """

    algo: ClassVar[str]

    num_envs: int = 16
    antithetic: bool = False
    noise: str = "gaussian"
    noise_scale: float = 0.3
    perturbed_weight_clip: float | None = None
    weight_clip: float | None = None
    policy_lr: float = 1e-3
    policy_lr_end: float = 1e-3
    # `str`, not `Literal`: a bad value then reaches `__post_init__`, whose error names the choices.
    policy_lr_schedule: str = "constant"
    weight_decay: float = 0.0
    policy_width: int = 64
    policy_depth: int = 2
    observation_normalization: bool = False
    reward_shift: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "noise", self.noise, NOISES)
        check_choice(owner, "policy_lr_schedule", self.policy_lr_schedule, SCHEDULES)
        check_choice(owner, "backend", self.backend, BACKENDS)
        for name in ("num_envs", "policy_width"):
            check_int(owner, name, getattr(self, name), minimum=1)
        check_int(owner, "policy_depth", self.policy_depth, minimum=0)
        for name in ("policy_lr", "policy_lr_end", "noise_scale"):
            check_float(owner, name, getattr(self, name), positive=True)
        for name in ("weight_decay", "reward_shift"):
            check_float(owner, name, getattr(self, name), positive=False)
        for name in ("perturbed_weight_clip", "weight_clip"):
            if getattr(self, name) is not None:
                check_float(owner, name, getattr(self, name), positive=True)
        check_bool(owner, "antithetic", self.antithetic)
        check_bool(owner, "observation_normalization", self.observation_normalization)
        if self.antithetic and self.num_envs % 2:
            fail(owner, "num_envs", f"must be even with antithetic pairs, got {self.num_envs}")
