"""PPO and SAC configurations: frozen, validated, JSON round-trippable."""

import dataclasses
from typing import ClassVar

from nfn_rl.run._config import TrainConfig, check_fields, check_int, fail


@dataclasses.dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """What PPO and SAC share. One iteration steps all `num_envs` environments `unroll_length`
    times (auto-resetting finished episodes), then updates the networks.

    Attributes:
        num_envs: parallel environments.
        unroll_length: steps per environment per iteration.
        learning_rate: Adam learning rate of every network.
        discount: discount factor gamma.
        reward_scale: rewards are multiplied by this for learning (not for the logged returns).
        normalize_observations: standardise observations with running statistics.
        policy_width: width of the policy MLP's hidden layers (SiLU).
        policy_depth: number of hidden layers of the policy MLP.
        value_width: width of the value (PPO) or Q (SAC) MLPs' hidden layers.
        value_depth: number of hidden layers of the value (PPO) or Q (SAC) MLPs.
    """

    algo: ClassVar[str]

    num_envs: int = 16
    unroll_length: int = 16
    learning_rate: float = 3e-4
    discount: float = 0.99
    reward_scale: float = 1.0
    normalize_observations: bool = True
    policy_width: int = 64
    policy_depth: int = 2
    value_width: int = 64
    value_depth: int = 2

    def __post_init__(self):
        super().__post_init__()
        check_fields(
            self,
            positive_ints=self._positive_ints(),
            counts=("policy_depth", "value_depth"),
            positive=self._positive_floats(),
            fractions=self._unit_floats(),
            bools=("normalize_observations",),
        )

    def _positive_ints(self) -> tuple[str, ...]:
        return ("num_envs", "unroll_length", "policy_width", "value_width")

    def _positive_floats(self) -> tuple[str, ...]:
        return ("learning_rate", "reward_scale")

    def _unit_floats(self) -> tuple[str, ...]:
        return ("discount",)

    @property
    def steps_per_iteration(self) -> int:
        """Environment steps per iteration."""
        return self.num_envs * self.unroll_length


@dataclasses.dataclass(frozen=True)
class PPOConfig(BaselineConfig):
    """Proximal Policy Optimization (Schulman et al., 2017) with GAE and clipped ratios.

    Each iteration collects `unrolls_per_update` consecutive unrolls of `unroll_length` steps
    from every environment (advantages are estimated within each unroll and bootstrapped from
    the value at its end, as Brax does), then uses those `steps_per_iteration` transitions for
    `update_epochs` passes of `num_minibatches` Adam steps.

    Attributes:
        unrolls_per_update: unrolls of `unroll_length` steps per environment and iteration.
        num_minibatches: minibatches per epoch (must divide `steps_per_iteration`).
        update_epochs: passes over each iteration's data.
        gae_lambda: lambda of generalised advantage estimation.
        clip_epsilon: PPO ratio clip.
        entropy_cost: weight of the entropy bonus.
        value_cost: weight of the value loss.
        max_grad_norm: global gradient-norm clip.
    """

    algo: ClassVar[str] = "ppo"

    unrolls_per_update: int = 1
    num_minibatches: int = 4
    update_epochs: int = 4
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    entropy_cost: float = 1e-3
    value_cost: float = 0.5
    max_grad_norm: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.steps_per_iteration % self.num_minibatches:
            fail(
                "PPOConfig",
                "num_minibatches",
                f"must divide the transitions per iteration "
                f"(num_envs * unroll_length * unrolls_per_update = {self.steps_per_iteration}), "
                f"got {self.num_minibatches}",
            )

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length * self.unrolls_per_update

    def _positive_ints(self) -> tuple[str, ...]:
        return super()._positive_ints() + ("unrolls_per_update", "num_minibatches", "update_epochs")

    def _positive_floats(self) -> tuple[str, ...]:
        return super()._positive_floats() + ("clip_epsilon", "value_cost", "max_grad_norm")

    def _unit_floats(self) -> tuple[str, ...]:
        return super()._unit_floats() + ("gae_lambda", "entropy_cost")


@dataclasses.dataclass(frozen=True)
class SACConfig(BaselineConfig):
    """Soft Actor-Critic (Haarnoja et al., 2018): twin Q networks with Polyak-averaged targets
    and a learned temperature aiming at entropy `-action_size`. Continuous actions only.

    Attributes:
        batch_size: transitions per gradient step, sampled uniformly from the replay buffer.
        grad_updates: gradient steps per iteration.
        replay_size: replay buffer capacity (FIFO).
        min_replay: no gradient steps until the buffer holds this many transitions.
        tau: Polyak averaging rate of the target Q networks.
        init_alpha: initial temperature.
    """

    algo: ClassVar[str] = "sac"

    unroll_length: int = 1
    normalize_observations: bool = False
    batch_size: int = 256
    grad_updates: int = 8
    replay_size: int = 100_000
    min_replay: int = 1_000
    tau: float = 0.005
    init_alpha: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_int("SACConfig", "min_replay", self.min_replay, minimum=0)
        if self.min_replay > self.replay_size:
            fail("SACConfig", "min_replay", f"must be <= replay_size={self.replay_size}")

    def _positive_ints(self) -> tuple[str, ...]:
        return super()._positive_ints() + ("batch_size", "grad_updates", "replay_size")

    def _positive_floats(self) -> tuple[str, ...]:
        return super()._positive_floats() + ("init_alpha",)

    def _unit_floats(self) -> tuple[str, ...]:
        return super()._unit_floats() + ("tau",)
