"""Deterministic MLP policies, the objects an EPVF critic evaluates and improves."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from nfn_rl.envs import Environment


# A module-level function rather than a lambda: equal policies must have equal static parts, so
# that jitted training code built twice from the same config is compiled once.
def _identity(x):
    return x


def make_policy(
    env: Environment,
    width: int = 64,
    depth: int = 2,
    *,
    key: PRNGKeyArray,
    activation: Callable = jnp.tanh,
    use_bias: bool = True,
) -> eqx.nn.MLP:
    """A deterministic MLP policy for `env` with `depth` hidden layers of `width` neurons.

    It maps an observation to `env.action_size` logits for discrete environments (the action is
    their argmax) and to actions in `[-1, 1]` (tanh output) for continuous ones.
    """
    return eqx.nn.MLP(
        in_size=env.observation_size,
        out_size=env.action_size,
        width_size=width,
        depth=depth,
        activation=activation,
        final_activation=_identity if env.discrete else jnp.tanh,
        use_bias=use_bias,
        use_final_bias=use_bias,
        key=key,
    )
