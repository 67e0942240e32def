"""Policy-conditioned value functions V(policy) and a registry of them by name."""

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray


class Critic(eqx.Module):
    """An explicit policy-conditioned value function: `critic(policy)` predicts the policy's return.

    `policy` is the policy module itself (an `eqx.nn.MLP`); implementations must be differentiable
    with respect to the policy's arrays, since the policy is improved by ascending the critic.
    """

    @abc.abstractmethod
    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        """The predicted undiscounted return of `policy`."""


def flat_params(policy: eqx.Module) -> Float[Array, " params"]:
    """The concatenation of the policy's array leaves in tree order."""
    return ravel_pytree(eqx.filter(policy, eqx.is_array))[0]


class FlatCritic(Critic):
    """A ReLU MLP on the flattened policy parameters (Faccio et al.'s PSSVF critic)."""

    mlp: eqx.nn.MLP

    def __init__(self, policy: eqx.Module, hidden: Sequence[int] = (64, 64), *, key: PRNGKeyArray):
        hidden = tuple(hidden)
        if len(set(hidden)) > 1:
            raise ValueError(f"hidden layers must have equal widths (eqx.nn.MLP), got {hidden}")
        self.mlp = eqx.nn.MLP(
            in_size=flat_params(policy).shape[0],
            out_size="scalar",
            width_size=hidden[0] if hidden else 1,
            depth=len(hidden),
            activation=jax.nn.relu,
            key=key,
        )

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        return self.mlp(flat_params(policy))


CriticFactory = Callable[..., Critic]
"""`factory(policy, *, key, hidden) -> Critic`, the signature `make_critic` calls."""

_CRITICS: dict[str, CriticFactory] = {"flat": FlatCritic}


def register_critic(name: str, factory: CriticFactory) -> None:
    """Make `make_critic(name, policy, key=..., hidden=...)` call `factory` with those arguments."""
    if name in _CRITICS:
        raise ValueError(f"critic {name!r} is already registered")
    _CRITICS[name] = factory


def critic_names() -> tuple[str, ...]:
    """The names `make_critic` knows."""
    return tuple(sorted(_CRITICS))


def make_critic(
    name: str, policy: eqx.Module, *, key: PRNGKeyArray, hidden: Sequence[int] = (64, 64)
) -> Critic:
    """The critic registered as `name`, sized for policies shaped like `policy`."""
    if name not in _CRITICS:
        raise ValueError(f"unknown critic {name!r}; known: {', '.join(critic_names())}")
    return _CRITICS[name](policy, key=key, hidden=tuple(hidden))
