"""The EPVF training configuration: every knob of Algorithm 1, validated on construction."""

import dataclasses
from typing import ClassVar

from nfn_rl.epvf._critics import critic_names, critic_options
from nfn_rl.population import SHAPINGS, PerturbationConfig
from nfn_rl.run._config import check_choice, check_fields, fail


@dataclasses.dataclass(frozen=True)
class EPVFConfig(PerturbationConfig):
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
    several seeds train in one compiled program. The fields the ES baseline shares are those of
    `PerturbationConfig`.

    Attributes:
        batch_size: critic batch N, sampled without replacement from the buffer.
        buffer_size: FIFO buffer capacity.
        critic_steps: critic Adam steps per iteration (K).
        policy_steps: policy Adam steps per iteration (L).
        critic_lr: critic Adam learning rate.
        critic_targets: what the critic fits, computed over each batch: "returns" (the paper),
            "standardized" (the batch's returns minus their mean, over their standard deviation)
            or "centered_ranks" (each return's rank in the batch mapped to [-0.5, 0.5], as
            OpenAI-ES shapes fitness). The policy steps only use the critic's gradient direction
            (Adam), which an affine change of the targets leaves unchanged, but a critic fits
            standardised targets of any scale (on the position Ant a still policy's returns are
            of order 1e-5, far below the precision a critic reaches with learning rate 1e-3 on
            raw targets), and ranks are immune to the outliers of a heavy-tailed return
            distribution. `critic_loss` is then in those units (1 - R^2 on the batch for
            standardised targets).
        critic_ridge: after the Adam steps, refit the last linear layer of the critic's MLP in
            closed form by ridge regression on a batch (`nfn_rl.epvf.ridge_head`), with this
            penalty relative to the features' mean variance; None = off (the paper). With
            `critic_depth=0` that layer reads the critic's representation itself (UNF features
            and the flat parameters for `unf+params`).
        multiple_policies: train `num_envs` independently initialised policies, each perturbed
            once per iteration, instead of perturbing one policy `num_envs` times.
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
    """

    algo: ClassVar[str] = "epvf"

    env: str = "cartpole"
    iterations: int = 300
    log_interval: int = 25
    checkpoint_interval: int = 100
    batch_size: int = 16
    buffer_size: int = 100_000
    critic_steps: int = 10
    policy_steps: int = 10
    critic_lr: float = 1e-3
    critic_targets: str = "returns"
    critic_ridge: float | None = None
    multiple_policies: bool = False
    critic: str = "flat"
    critic_width: int = 64
    critic_depth: int = 2
    probing_states: int = 200
    unf_channels: int = 16
    unf_depth: int = 1
    unf_features: int = 64
    unf_layer_norm: bool = True
    canonicalize: bool = False

    def __post_init__(self):
        super().__post_init__()
        owner = "EPVFConfig"
        check_choice(owner, "critic", self.critic, critic_names())
        check_choice(owner, "critic_targets", self.critic_targets, SHAPINGS)
        check_fields(
            self,
            positive_ints=(
                "batch_size",
                "buffer_size",
                "critic_steps",
                "critic_width",
                "probing_states",
                "unf_channels",
                "unf_depth",
                "unf_features",
            ),
            counts=("policy_steps", "critic_depth"),
            positive=("critic_lr",) + (() if self.critic_ridge is None else ("critic_ridge",)),
            bools=("multiple_policies", "unf_layer_norm", "canonicalize"),
        )
        if self.canonicalize and "canonicalize" not in critic_options(self.critic):
            fail(
                owner,
                "canonicalize",
                f"applies to critics that take it (unf, unf+params), not {self.critic!r}",
            )
        if self.antithetic and self.multiple_policies:
            fail(owner, "antithetic", "pairs one policy's perturbations: not multiple_policies")
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
