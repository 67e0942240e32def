"""The config convention every trainer follows: a frozen dataclass, validated on construction,
with a JSON round trip; errors name the class and the field."""

import dataclasses
import json
import math
from typing import Any, ClassVar

from nfn_rl.envs import env_names
from nfn_rl.envs._gymnasium import gymnasium_spec


def fail(owner: str, name: str, message: str):
    raise ValueError(f"{owner}.{name}: {message}")


def check_int(owner: str, name: str, value: Any, *, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(owner, name, f"must be an integer >= {minimum}, got {value!r}")


def check_float(owner: str, name: str, value: Any, *, positive: bool, maximum: float | None = None):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        fail(owner, name, f"must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        fail(owner, name, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if maximum is not None and value > maximum:
        fail(owner, name, f"must be <= {maximum}, got {value!r}")


def check_bool(owner: str, name: str, value: Any):
    if not isinstance(value, bool):
        fail(owner, name, f"must be a bool, got {value!r}")


def check_fields(
    config: Any,
    *,
    positive_ints: tuple[str, ...] = (),
    counts: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    fractions: tuple[str, ...] = (),
    bools: tuple[str, ...] = (),
):
    """Check the named fields of ``config`` in this order: integers >= 1 (``positive_ints``),
    integers >= 0 (``counts``), finite numbers > 0 (``positive``) and in [0, 1] (``fractions``),
    bools; the error names the class and the field."""
    owner = type(config).__name__
    for names, check in (
        (positive_ints, lambda name, value: check_int(owner, name, value, minimum=1)),
        (counts, lambda name, value: check_int(owner, name, value, minimum=0)),
        (positive, lambda name, value: check_float(owner, name, value, positive=True)),
        (
            fractions,
            lambda name, value: check_float(owner, name, value, positive=False, maximum=1.0),
        ),
        (bools, lambda name, value: check_bool(owner, name, value)),
    ):
        for name in names:
            check(name, getattr(config, name))


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]):
    if value not in choices:
        fail(owner, name, f"must be one of {', '.join(map(repr, choices))}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What every trainer's config has: the environment and the host loop's schedule.

    Subclasses are frozen dataclasses that name their algorithm in `algo`, list their extra
    checks in `__post_init__` (calling this one first), and keep every field JSON-serialisable.

    Attributes:
        env: environment name (`nfn_rl.make_env`).
        horizon: episode length; None = the environment's default.
        iterations: training iterations.
        eval_interval: evaluate the trained policy every this many iterations.
        eval_episodes: episodes (initial states) per evaluation.
        log_interval: iterations per jitted chunk; metrics are written after every chunk.
        checkpoint_interval: iterations between checkpoints (a multiple of `log_interval`).
    """

    algo: ClassVar[str]

    env: str = "cartpole"
    horizon: int | None = None
    iterations: int = 100
    eval_interval: int = 10
    eval_episodes: int = 10
    log_interval: int = 10
    checkpoint_interval: int = 50

    def __post_init__(self):
        owner = type(self).__name__
        if self.env not in env_names() and gymnasium_spec(self.env) is None:
            known = ", ".join(env_names())
            fail(
                owner,
                "env",
                f"unknown environment {self.env!r}; known: {known}, or any registered "
                "Gymnasium id (e.g. 'Swimmer-v5')",
            )
        if self.horizon is not None:
            check_int(owner, "horizon", self.horizon, minimum=1)
        check_fields(
            self,
            positive_ints=(
                "iterations",
                "eval_interval",
                "eval_episodes",
                "log_interval",
                "checkpoint_interval",
            ),
        )
        if self.iterations % self.log_interval:
            fail(owner, "iterations", f"must be a multiple of log_interval={self.log_interval}")
        if self.checkpoint_interval % self.log_interval:
            interval = self.log_interval
            fail(owner, "checkpoint_interval", f"must be a multiple of log_interval={interval}")

    def to_dict(self) -> dict[str, Any]:
        """The fields and `algo`, as `from_dict` reads them."""
        return {"algo": self.algo, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "TrainConfig":
        """The config from `to_dict`'s object, also after a JSON round trip (an `algo` entry,
        if present, must match; unknown fields are refused by name)."""
        fields = dict(fields)
        algo = fields.pop("algo", cls.algo)
        if algo != cls.algo:
            raise ValueError(f"a {algo!r} config cannot be read as {cls.__name__}")
        # JSON turns tuples into lists.
        return with_fields(
            cls, {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        )

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))


def schedule(*, iterations: int, log_interval: int, checkpoint_interval: int) -> dict[str, int]:
    """The host loop's fields of a preset: `iterations`, a jitted chunk (and a metrics row
    flush) every `log_interval` iterations, one evaluation episode at the end of each chunk
    (the Ant's reset is deterministic), and checkpoints every `checkpoint_interval`."""
    return dict(
        iterations=iterations,
        log_interval=log_interval,
        eval_interval=log_interval,
        eval_episodes=1,
        checkpoint_interval=checkpoint_interval,
    )


def with_fields(cls: type[TrainConfig], fields: dict[str, Any]) -> TrainConfig:
    """`cls(**fields)`, refusing unknown field names by name (presets and overrides)."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**fields)
