"""Policy-conditioned value functions V(policy) and a registry of them by name."""

import abc
from collections.abc import Sequence

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
