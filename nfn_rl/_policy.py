"""Deterministic MLP policies, the objects an EPVF critic evaluates and improves."""

from collections.abc import Callable, Sequence

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
    hidden: Sequence[int] = (64, 64),
    *,
    key: PRNGKeyArray,
    activation: Callable = jnp.tanh,
    use_bias: bool = True,
) -> eqx.nn.MLP:
    """A deterministic MLP policy for `env`.

    It maps an observation to `env.action_size` logits for discrete environments (the action is
    their argmax) and to actions in `[-1, 1]` (tanh output) for continuous ones.
    """
    hidden = tuple(hidden)
    if len(set(hidden)) > 1:
        raise ValueError(f"hidden layers must have equal widths (eqx.nn.MLP), got {hidden}")
    if any(width < 1 for width in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    return eqx.nn.MLP(
        in_size=env.observation_size,
        out_size=env.action_size,
        # With no hidden layer eqx.nn.MLP ignores the width.
        width_size=hidden[0] if hidden else 1,
        depth=len(hidden),
        activation=activation,
        final_activation=_identity if env.discrete else jnp.tanh,
        use_bias=use_bias,
        use_final_bias=use_bias,
        key=key,
    )
