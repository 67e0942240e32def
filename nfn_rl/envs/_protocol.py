"""The environment protocol EPVF training runs on: pure, vmap-able, one episode per policy."""

import abc

import equinox as eqx
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree


class EnvState(eqx.Module):
    """What every environment state carries; environments may subclass it with more fields.

    `reward` is the reward of the transition that produced this state, and `done` says whether the
    episode has ended (terminated or truncated) at or before this state. There is no auto-reset:
    stepping a done state is allowed and its rewards must be ignored by the caller (`episode_return`
    masks them).
    """

    obs: Float[Array, " obs"]
    reward: Float[Array, ""]
    done: Bool[Array, ""]
    physics: PyTree
    step_count: Array


class Environment(eqx.Module):
    """A JAX environment. All methods are pure and act on one environment; callers `vmap`.

    Subclasses set the metadata fields (`observation_size`, `action_size`, `discrete`, `horizon`,
    `max_return`) and implement `reset` and `step`. For discrete environments actions are integer
    indices in `[0, action_size)`; for continuous ones they are float vectors in
    `[-1, 1]^action_size`.
    """

    observation_size: eqx.AbstractVar[int]
    action_size: eqx.AbstractVar[int]
    discrete: eqx.AbstractVar[bool]
    horizon: eqx.AbstractVar[int]
    max_return: eqx.AbstractVar[float]

    @abc.abstractmethod
    def reset(self, key: PRNGKeyArray) -> EnvState:
        """The initial state of one episode."""

    @abc.abstractmethod
    def step(self, state: EnvState, action: Array) -> EnvState:
        """Advance one control step."""
