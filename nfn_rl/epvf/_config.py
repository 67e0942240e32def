"""The EPVF training configuration: every knob of Algorithm 1, validated on construction."""

import dataclasses
from typing import ClassVar

from nfn_rl.epvf._critics import critic_names, critic_options
from nfn_rl.epvf._perturb import NOISES
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
class EPVFConfig(TrainConfig):
    """Hyperparameters of an EPVF run; the defaults solve Cartpole within a minute on 2 CPU cores.

    They follow Faccio et al.'s public Cartpole settings (batch 16, FIFO buffer 1e5, K = L = 10 Adam
    steps with learning rates 1e-3, Gaussian perturbations, policy and critic MLPs of two hidden
    layers of 64) with two changes that make Cartpole solve in far fewer iterations: 16
    environments instead of one (the paper's Figure 1: more perturbations per iteration learn
    faster, and on a CPU an iteration's time is mostly the critic and policy steps, which do not
    grow with them) and perturbation scale 0.3 instead of 1.0 (1.0 had not solved after 300
    iterations with 8 environments). Faccio also normalises observations with running
    statistics; Cartpole's are of order one and are used raw.

    The seed is not part of the config: it is data (`nfn_rl.train(config, seeds=...)`), so that
    several seeds train in one compiled program.

    Attributes:
        num_envs: environments per iteration = perturbed policies rolled out per iteration (M).
        batch_size: critic batch N, sampled without replacement from the buffer.
        buffer_size: FIFO buffer capacity.
        critic_steps: critic Adam steps per iteration (K).
        policy_steps: policy Adam steps per iteration (L).
        critic_lr: critic Adam learning rate.
        standardize_returns: fit the critic to each batch's returns standardised by that
            batch's mean and standard deviation instead of the raw returns. The policy steps
            only use the critic's gradient direction (Adam), which an affine change of the
            targets leaves unchanged, but the critic can then fit returns of any scale: on the
            position Ant a still policy's returns are of order 1e-5, far below the precision a
            critic reaches with learning rate 1e-3 on raw targets. `critic_loss` is then the
            normalised error (1 - R^2 on the batch). Off in the paper's recipe.
        policy_lr: policy learning rate (at the first iteration).
        policy_lr_end: policy learning rate at the last iteration (exponential schedule only).
        policy_lr_schedule: "constant" or "exponential" (from `policy_lr` to `policy_lr_end`).
        noise: "gaussian" (N(0, noise_scale^2)) or "uniform_scaled" (U(-s|w|, s|w|)).
        noise_scale: sigma of the Gaussian, or s of the scaled uniform noise.
        perturbed_weight_clip: clip the parameters of every perturbed policy (the policies that
            are rolled out) to (-c, c); None = off. The paper's `clip_perturbations` ablation
            uses this in place of `weight_clip`.
        weight_clip: clip the policy parameters to (-c, c) at initialisation and after the
            policy steps; None = off.
        weight_decay: decoupled (AdamW) weight decay of the policy optimiser.
        multiple_policies: train `num_envs` independently initialised policies, each perturbed
            once per iteration, instead of perturbing one policy `num_envs` times.
        policy_width: width of the policy MLP's hidden layers (tanh).
        policy_depth: number of hidden layers of the policy MLP.
        critic: critic name (`nfn_rl.make_critic`).
        critic_width: width of the critic MLP's hidden layers.
        critic_depth: number of hidden layers of the critic MLP.
        probing_states: learned probing states of the probing critics.
        unf_channels: channels of the UNF critics' equivariant layers.
        unf_depth: equivariant layers of the UNF critics' encoder.
        unf_features: invariant features the UNF critics' encoder outputs.
        unf_layer_norm: a channel layer norm after the UNF critics' equivariant layer.
        canonicalize: the UNF critics read `nfn.canonicalize`d policies (each hidden tanh
            neuron's sign fixed), so they are invariant to sign flips as well as to
            permutations of hidden neurons. UNF critics only.
        backend: how the Ant's episodes are simulated: "mjx" (jitted MJX, for accelerators),
            "native" (MuJoCo's C engine on the host's threads, `nfn_rl.envs.NativeAnt`), or
            "auto": native when JAX runs on one CPU device (per process), MJX otherwise. Other
            environments are JAX code and ignore it ("native" is refused for them).
    """

    algo: ClassVar[str] = "epvf"

    env: str = "cartpole"
    iterations: int = 300
    log_interval: int = 25
    checkpoint_interval: int = 100
    num_envs: int = 16
    batch_size: int = 16
    buffer_size: int = 100_000
    critic_steps: int = 10
    policy_steps: int = 10
    critic_lr: float = 1e-3
    standardize_returns: bool = False
    policy_lr: float = 1e-3
    policy_lr_end: float = 1e-3
    # `str`, not `Literal`: a bad value then reaches `__post_init__`, whose error names the choices.
    policy_lr_schedule: str = "constant"
    noise: str = "gaussian"
    noise_scale: float = 0.3
    perturbed_weight_clip: float | None = None
    weight_clip: float | None = None
    weight_decay: float = 0.0
    multiple_policies: bool = False
    policy_width: int = 64
    policy_depth: int = 2
    critic: str = "flat"
    critic_width: int = 64
    critic_depth: int = 2
    probing_states: int = 200
    unf_channels: int = 16
    unf_depth: int = 1
    unf_features: int = 64
    unf_layer_norm: bool = True
    canonicalize: bool = False
    backend: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        owner = "EPVFConfig"
        check_choice(owner, "critic", self.critic, critic_names())
        check_choice(owner, "noise", self.noise, NOISES)
        check_choice(owner, "policy_lr_schedule", self.policy_lr_schedule, SCHEDULES)
        check_choice(owner, "backend", self.backend, BACKENDS)
        positive_ints = (
            "num_envs",
            "batch_size",
            "buffer_size",
            "critic_steps",
            "policy_width",
            "critic_width",
            "probing_states",
            "unf_channels",
            "unf_depth",
            "unf_features",
        )
        for name in positive_ints:
            check_int(owner, name, getattr(self, name), minimum=1)
        for name in ("policy_steps", "policy_depth", "critic_depth"):
            check_int(owner, name, getattr(self, name), minimum=0)
        for name in ("critic_lr", "policy_lr", "policy_lr_end", "noise_scale"):
            check_float(owner, name, getattr(self, name), positive=True)
        check_float(owner, "weight_decay", self.weight_decay, positive=False)
        for name in ("perturbed_weight_clip", "weight_clip"):
            if getattr(self, name) is not None:
                check_float(owner, name, getattr(self, name), positive=True)
        check_bool(owner, "multiple_policies", self.multiple_policies)
        check_bool(owner, "unf_layer_norm", self.unf_layer_norm)
        check_bool(owner, "standardize_returns", self.standardize_returns)
        check_bool(owner, "canonicalize", self.canonicalize)
        if self.canonicalize and "canonicalize" not in critic_options(self.critic):
            fail(
                owner,
                "canonicalize",
                f"applies to critics that take it (unf, unf+params), not {self.critic!r}",
            )
        if self.batch_size > self.buffer_size:
            fail(owner, "batch_size", f"must be <= buffer_size={self.buffer_size}")
        pairs = self.iterations * self.num_envs
        if self.batch_size > pairs:
            fail(
                owner,
                "batch_size",
                f"must be <= the {pairs} (policy, return) pairs the run can ever collect "
                "(iterations * num_envs)",
            )
