"""Critics that read a policy through its actions on learned probing states (Harb et al. 2020,
Faccio et al. 2022)."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from nfn_rl._critics import Critic, flat_params


def _mlp(in_size: int, hidden: Sequence[int], *, key: PRNGKeyArray) -> eqx.nn.MLP:
    hidden = tuple(hidden)
    if len(set(hidden)) > 1:
        raise ValueError(f"hidden layers must have equal widths (eqx.nn.MLP), got {hidden}")
    return eqx.nn.MLP(
        in_size,
        "scalar",
        width_size=hidden[0] if hidden else 1,
        depth=len(hidden),
        activation=jax.nn.relu,
        key=key,
    )


class ProbingCritic(Critic):
    """V(policy) = MLP(policy's outputs on P learnable probing states, concatenated).

    The probing states are critic parameters: critic training moves them to states whose actions
    tell policies apart. Gradients reach the policy through its outputs (logits for discrete
    environments, tanh actions for continuous ones). With `with_params=True` the flat parameters
    are concatenated to the actions ("probing+params").
    """

    probing_states: Float[Array, "states obs"]
    mlp: eqx.nn.MLP
    with_params: bool = eqx.field(static=True)

    def __init__(
        self,
        policy: eqx.Module,
        hidden: Sequence[int] = (64, 64),
        *,
        key: PRNGKeyArray,
        probing_states: int = 200,
        with_params: bool = False,
    ):
        if not isinstance(probing_states, int) or probing_states < 1:
            raise ValueError(f"probing_states must be a positive int, got {probing_states!r}")
        state_key, mlp_key = jax.random.split(key)
        obs_size = policy.in_size
        # U[0, 1) as in Faccio et al.'s published probing critic.
        self.probing_states = jax.random.uniform(state_key, (probing_states, obs_size))
        in_size = self._representation(policy, self.probing_states, with_params).shape[0]
        self.mlp = _mlp(in_size, hidden, key=mlp_key)
        self.with_params = with_params

    @staticmethod
    def _representation(policy, states, with_params: bool) -> Float[Array, " features"]:
        actions = jax.vmap(policy)(states).reshape(-1)
        return jnp.concatenate([actions, flat_params(policy)]) if with_params else actions

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        return self.mlp(self._representation(policy, self.probing_states, self.with_params))


def probing_plus_params(
    policy: eqx.Module,
    hidden: Sequence[int] = (64, 64),
    *,
    key: PRNGKeyArray,
    probing_states: int = 200,
) -> Critic:
    """The "probing+params" critic: probing actions concatenated with the flat parameters."""
    return ProbingCritic(policy, hidden, key=key, probing_states=probing_states, with_params=True)
