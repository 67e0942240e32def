"""Critics built on `nfn`'s Universal Neural Functional encoders over the policy's weight space."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import nfn
from nfn_rl._critics import Critic, flat_params
from nfn_rl._critics_probing import _mlp


class UNFCritic(Critic):
    """V(policy) from a permutation-invariant UNF encoder of the policy's parameters.

    The policy's weight space has fixed input and output neurons (`nfn.weight_space(policy)`), so
    the critic is exactly invariant to permutations of hidden neurons, which leave the policy's
    behaviour unchanged. With `with_params=True` ("unf+params") the encoder's invariant features
    are concatenated with the flat parameters before the MLP head, giving up that invariance for
    direct access to every weight.
    """

    encoder: nfn.InvariantEncoder
    head: eqx.nn.MLP
    with_params: bool = eqx.field(static=True)

    def __init__(
        self,
        policy: eqx.Module,
        hidden: Sequence[int] = (64, 64),
        *,
        key: PRNGKeyArray,
        unf_channels: int = 16,
        unf_depth: int = 1,
        unf_features: int = 64,
        with_params: bool = False,
    ):
        encoder_key, head_key = jax.random.split(key)
        space = nfn.weight_space(policy)
        self.encoder = nfn.InvariantEncoder(
            space,
            unf_features,
            hidden_channels=unf_channels,
            depth=unf_depth,
            invariant_features=unf_features,
            head_sizes=(),
            key=encoder_key,
        )
        self.with_params = with_params
        in_size = unf_features + (flat_params(policy).shape[0] if with_params else 0)
        self.head = _mlp(in_size, hidden, key=head_key)

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        params = eqx.filter(policy, eqx.is_array)
        features = jax.nn.relu(self.encoder(nfn.to_features(params)))
        if self.with_params:
            features = jnp.concatenate([features, flat_params(policy)])
        return self.head(features)


def unf_plus_params(
    policy: eqx.Module,
    hidden: Sequence[int] = (64, 64),
    *,
    key: PRNGKeyArray,
    unf_channels: int = 16,
    unf_depth: int = 1,
    unf_features: int = 64,
) -> Critic:
    """The "unf+params" critic: UNF invariant features concatenated with the flat parameters."""
    return UNFCritic(
        policy,
        hidden,
        key=key,
        unf_channels=unf_channels,
        unf_depth=unf_depth,
        unf_features=unf_features,
        with_params=True,
    )
