"""PPO and SAC configurations: frozen, validated, JSON round-trippable."""

import dataclasses
import json
from typing import Any, ClassVar

from nfn_rl._validation import check_float, check_int, check_widths, fail
from nfn_rl.envs import env_names


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """What PPO and SAC share. One iteration steps all `num_envs` environments `unroll_length`
    times (auto-resetting finished episodes), then updates the networks.

    Attributes:
        env: environment name (`nfn_rl.make_env`).
        horizon: episode length (truncation); None = the environment's default.
        seed: seed of initialisation and of all randomness.
        num_envs: parallel environments.
        unroll_length: steps per environment per iteration.
        iterations: training iterations; env steps = iterations * num_envs * unroll_length.
        learning_rate: Adam learning rate of every network.
        discount: discount factor gamma.
        reward_scale: rewards are multiplied by this for learning (not for the logged returns).
        normalize_observations: standardise observations with running statistics.
        policy_hidden: hidden widths of the policy MLP (SiLU).
        value_hidden: hidden widths of the value (PPO) or Q (SAC) MLPs.
        eval_interval: evaluate the deterministic policy every this many iterations.
        eval_episodes: episodes per evaluation (random initial states where the env has them).
        log_interval: iterations per jitted chunk; metrics are written after every chunk.
        checkpoint_interval: iterations between checkpoints (a multiple of `log_interval`).
    """

    algo: ClassVar[str]

    env: str = "cartpole"
    horizon: int | None = None
    seed: int = 0
    num_envs: int = 16
    unroll_length: int = 16
    iterations: int = 100
    learning_rate: float = 3e-4
    discount: float = 0.99
    reward_scale: float = 1.0
    normalize_observations: bool = True
    policy_hidden: tuple[int, ...] = (64, 64)
    value_hidden: tuple[int, ...] = (64, 64)
    eval_interval: int = 10
    eval_episodes: int = 10
    log_interval: int = 10
    checkpoint_interval: int = 50

    def __post_init__(self):
        owner = type(self).__name__
        object.__setattr__(self, "policy_hidden", tuple(self.policy_hidden))
        object.__setattr__(self, "value_hidden", tuple(self.value_hidden))
        if self.env not in env_names():
            fail(owner, "env", f"unknown environment {self.env!r}; known: {', '.join(env_names())}")
        if self.horizon is not None:
            check_int(owner, "horizon", self.horizon, minimum=1)
        check_int(owner, "seed", self.seed, minimum=0)
        for name in self._positive_ints():
            check_int(owner, name, getattr(self, name), minimum=1)
        for name in self._positive_floats():
            check_float(owner, name, getattr(self, name), positive=True)
        for name in self._unit_floats():
            check_float(owner, name, getattr(self, name), positive=False, maximum=1.0)
        if not isinstance(self.normalize_observations, bool):
            fail(
                owner,
                "normalize_observations",
                f"must be a bool, got {self.normalize_observations!r}",
            )
        check_widths(owner, "policy_hidden", self.policy_hidden)
        check_widths(owner, "value_hidden", self.value_hidden)
        if self.iterations % self.log_interval:
            fail(owner, "iterations", f"must be a multiple of log_interval={self.log_interval}")
        if self.checkpoint_interval % self.log_interval:
            fail(
                owner,
                "checkpoint_interval",
                f"must be a multiple of log_interval={self.log_interval}",
            )

    def _positive_ints(self) -> tuple[str, ...]:
        return (
            "num_envs",
            "unroll_length",
            "iterations",
            "eval_interval",
            "eval_episodes",
            "log_interval",
            "checkpoint_interval",
        )

    def _positive_floats(self) -> tuple[str, ...]:
        return ("learning_rate", "reward_scale")

    def _unit_floats(self) -> tuple[str, ...]:
        return ("discount",)

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length

    def to_json(self) -> str:
        return json.dumps({"algo": self.algo, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "BaselineConfig":
        """The config from `to_json`'s object (an `algo` entry, if present, must match)."""
        fields = dict(fields)
        algo = fields.pop("algo", cls.algo)
        if algo != cls.algo:
            raise ValueError(f"a {algo!r} config cannot be read as {cls.__name__}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


@dataclasses.dataclass(frozen=True)
class PPOConfig(BaselineConfig):
    """Proximal Policy Optimization (Schulman et al., 2017) with GAE and clipped ratios.

    Each iteration's `num_envs * unroll_length` transitions are used for `update_epochs` passes
    of `num_minibatches` Adam steps.

    Attributes:
        num_minibatches: minibatches per epoch (must divide `num_envs * unroll_length`).
        update_epochs: passes over each iteration's data.
        gae_lambda: lambda of generalised advantage estimation.
        clip_epsilon: PPO ratio clip.
        entropy_cost: weight of the entropy bonus.
        value_cost: weight of the value loss.
        max_grad_norm: global gradient-norm clip.
    """

    algo: ClassVar[str] = "ppo"

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
                f"must divide num_envs * unroll_length = {self.steps_per_iteration}, "
                f"got {self.num_minibatches}",
            )

    def _positive_ints(self) -> tuple[str, ...]:
        return super()._positive_ints() + ("num_minibatches", "update_epochs")

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
