"""Environments by name, so that a config can name its environment."""

from collections.abc import Callable

from nfn_rl.envs._ant import Ant
from nfn_rl.envs._cartpole import Cartpole
from nfn_rl.envs._gymnasium import GymnasiumEnv, gymnasium_spec
from nfn_rl.envs._protocol import Environment

EnvFactory = Callable[[int | None], Environment]


def _cartpole(horizon: int | None) -> Environment:
    return Cartpole() if horizon is None else Cartpole(horizon=horizon)


def _ant(horizon: int | None) -> Environment:
    return Ant() if horizon is None else Ant(horizon=horizon)


def _ant_torque(horizon: int | None) -> Environment:
    return Ant("torque") if horizon is None else Ant("torque", horizon=horizon)


_ENVS: dict[str, EnvFactory] = {"cartpole": _cartpole, "ant": _ant, "ant-torque": _ant_torque}


def register_env(name: str, factory: EnvFactory) -> None:
    """Make `make_env(name, horizon)` call `factory(horizon)` (None: the default horizon)."""
    if name in _ENVS:
        raise ValueError(f"environment {name!r} is already registered")
    _ENVS[name] = factory


def env_names() -> tuple[str, ...]:
    """The names `make_env` knows."""
    return tuple(sorted(_ENVS))


def make_env(name: str, horizon: int | None = None) -> Environment:
    """The environment registered as `name`, with its default horizon unless `horizon` is given.

    Any id registered with Gymnasium (e.g. `"Swimmer-v5"`) gives a `GymnasiumEnv`: natively
    batched on MuJoCo's C engine where a native version exists, else stepped by Gymnasium's
    vector API on the host.
    """
    if name in _ENVS:
        return _ENVS[name](horizon)
    if gymnasium_spec(name) is not None:
        return GymnasiumEnv(name, horizon)
    raise ValueError(
        f"unknown environment {name!r}; known: {', '.join(env_names())}, or any registered "
        "Gymnasium id (e.g. 'Swimmer-v5')"
    )
