"""Policy-conditioned value functions V(policy) (flat, probing and UNF critics) and a registry
of them by name, so that a config can name its critic."""

import abc
import inspect
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

import nfn


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


def _head(
    in_size: int, out_size: int | Literal["scalar"], width: int, depth: int, *, key: PRNGKeyArray
) -> eqx.nn.MLP:
    return eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.relu, key=key)


class FlatCritic(Critic):
    """A ReLU MLP on the flattened policy parameters (Faccio et al.'s PSSVF critic)."""

    mlp: eqx.nn.MLP

    def __init__(self, policy: eqx.Module, *, width: int, depth: int, key: PRNGKeyArray):
        self.mlp = _head(flat_params(policy).shape[0], "scalar", width, depth, key=key)

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        return self.mlp(flat_params(policy))


class ProbingCritic(Critic):
    """V(policy) = MLP(policy's outputs on P learnable probing states, concatenated).

    The probing states are critic parameters: critic training moves them to states whose actions
    tell policies apart. They start as draws from N(mean, std^2) of the environment's
    observations (`observation_stats`, as `nfn_rl.envs.observation_statistics` measures them);
    Faccio et al. start them U[0, 1), which suits normalised observations only. Gradients reach
    the policy through its outputs (logits for discrete environments, tanh actions for
    continuous ones). With `with_params=True` the flat parameters are concatenated to the
    actions ("probing+params").
    """

    probing_states: Float[Array, "states obs"]
    mlp: eqx.nn.MLP
    with_params: bool = eqx.field(static=True)

    def __init__(
        self,
        policy: eqx.Module,
        *,
        width: int,
        depth: int,
        key: PRNGKeyArray,
        probing_states: int = 200,
        observation_stats: tuple[Float[Array, " obs"], Float[Array, " obs"]] | None = None,
        with_params: bool = False,
    ):
        if not isinstance(probing_states, int) or probing_states < 1:
            raise ValueError(f"probing_states must be a positive int, got {probing_states!r}")
        state_key, mlp_key = jax.random.split(key)
        obs_size = policy.in_size
        mean, std = observation_stats if observation_stats is not None else (0.0, 1.0)
        noise = jax.random.normal(state_key, (probing_states, obs_size))
        self.probing_states = mean + std * noise
        in_size = self._representation(policy, self.probing_states, with_params).shape[0]
        self.mlp = _head(in_size, "scalar", width, depth, key=mlp_key)
        self.with_params = with_params

    @staticmethod
    def _representation(policy, states, with_params: bool) -> Float[Array, " features"]:
        actions = jax.vmap(policy)(states).reshape(-1)
        return jnp.concatenate([actions, flat_params(policy)]) if with_params else actions

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        return self.mlp(self._representation(policy, self.probing_states, self.with_params))


class UNFCritic(Critic):
    """V(policy) from a permutation-invariant UNF encoder of the policy's parameters.

    The policy's weight space has fixed input and output neurons (`nfn.weight_space(policy)`), so
    the critic is exactly invariant to permutations of hidden neurons, which leave the policy's
    behaviour unchanged. `unf_layer_norm` puts `nfn.ChannelLayerNorm` after the equivariant
    layer (`nfn.InvariantEncoder`'s default); it normalises away the policy's global weight
    scale and takes about two thirds of the encoder's gradient time (2048 policies of the `cpu`
    preset's shape: 1.06 s with it, 0.38 s without). With `with_params=True` ("unf+params") the
    encoder's invariant features are concatenated with the flat parameters before the MLP head,
    giving up that invariance for direct access to every weight.

    With `canonicalize=True` the critic reads `nfn.canonicalize(space, params)` instead of the
    parameters (also for `with_params`): each hidden neuron's sign (tanh policies) or scale
    (ReLU policies) is fixed first, so the critic is also invariant to those symmetries, e.g.
    the 2^(2 * 64) sign flips of a tanh policy with two hidden layers of 64. Gradients with
    respect to the policy still flow (the sign choices are constants, see `nfn.canonicalize`).
    """

    encoder: nfn.InvariantEncoder
    head: eqx.nn.MLP
    with_params: bool = eqx.field(static=True)
    canonical_space: nfn.WeightSpace | None = eqx.field(static=True)

    def __init__(
        self,
        policy: eqx.Module,
        *,
        width: int,
        depth: int,
        key: PRNGKeyArray,
        unf_channels: int = 16,
        unf_depth: int = 1,
        unf_features: int = 64,
        unf_layer_norm: bool = True,
        canonicalize: bool = False,
        with_params: bool = False,
    ):
        encoder_key, head_key = jax.random.split(key)
        space = nfn.weight_space(policy)
        self.canonical_space = space if canonicalize else None
        self.encoder = nfn.InvariantEncoder(
            space,
            unf_features,
            hidden_channels=unf_channels,
            depth=unf_depth,
            invariant_features=unf_features,
            head_sizes=(),
            norm="layer" if unf_layer_norm else None,
            key=encoder_key,
        )
        self.with_params = with_params
        in_size = unf_features + (flat_params(policy).shape[0] if with_params else 0)
        self.head = _head(in_size, "scalar", width, depth, key=head_key)

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        params = eqx.filter(policy, eqx.is_array)
        if self.canonical_space is not None:
            params = nfn.canonicalize(self.canonical_space, params)
        features = jax.nn.relu(self.encoder(nfn.to_features(params)))
        if self.with_params:
            features = jnp.concatenate([features, ravel_pytree(params)[0]])
        return self.head(features)


def probing_plus_params(
    policy: eqx.Module,
    *,
    width: int,
    depth: int,
    key: PRNGKeyArray,
    probing_states: int = 200,
    observation_stats: tuple[Float[Array, " obs"], Float[Array, " obs"]] | None = None,
) -> Critic:
    """The "probing+params" critic: probing actions concatenated with the flat parameters."""
    return ProbingCritic(
        policy,
        width=width,
        depth=depth,
        key=key,
        probing_states=probing_states,
        observation_stats=observation_stats,
        with_params=True,
    )


def unf_plus_params(
    policy: eqx.Module,
    *,
    width: int,
    depth: int,
    key: PRNGKeyArray,
    unf_channels: int = 16,
    unf_depth: int = 1,
    unf_features: int = 64,
    unf_layer_norm: bool = True,
    canonicalize: bool = False,
) -> Critic:
    """The "unf+params" critic: UNF invariant features concatenated with the flat parameters."""
    return UNFCritic(
        policy,
        width=width,
        depth=depth,
        key=key,
        unf_channels=unf_channels,
        unf_depth=unf_depth,
        unf_features=unf_features,
        unf_layer_norm=unf_layer_norm,
        canonicalize=canonicalize,
        with_params=True,
    )


CriticFactory = Callable[..., Critic]
"""`factory(policy, *, width, depth, key, **options) -> Critic`, as `make_critic` calls it."""

_CRITICS: dict[str, CriticFactory] = {
    "flat": FlatCritic,
    "probing": ProbingCritic,
    "probing+params": probing_plus_params,
    "unf": UNFCritic,
    "unf+params": unf_plus_params,
}


def register_critic(name: str, factory: CriticFactory) -> None:
    """Make `make_critic(name, policy, ...)` call `factory(policy, *, width, depth, key,
    **options)`. Its keyword-only options named like `EPVFConfig` fields (`probing_states`,
    `unf_channels`, `unf_depth`, `unf_features`, `unf_layer_norm`, `canonicalize`) get the
    config's values in training, and
    `observation_stats` gets the environment's observation mean and std."""
    if name in _CRITICS:
        raise ValueError(f"critic {name!r} is already registered")
    _CRITICS[name] = factory


def critic_names() -> tuple[str, ...]:
    """The names `make_critic` knows."""
    return tuple(sorted(_CRITICS))


def critic_options(name: str) -> tuple[str, ...]:
    """The keyword options critic `name` accepts beyond `width`, `depth` and `key`."""
    factory = _CRITICS[name]
    target = factory.__init__ if isinstance(factory, type) else factory
    parameters = inspect.signature(target).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.name not in ("width", "depth", "key", "with_params")
    )


def make_critic(
    name: str,
    policy: eqx.Module,
    *,
    key: PRNGKeyArray,
    width: int = 64,
    depth: int = 2,
    **options,
) -> Critic:
    """The critic registered as `name`, sized for policies shaped like `policy`.

    **Arguments:**

    - `name`: one of `critic_names()`: `"flat"` (MLP on the concatenated parameters),
      `"probing"` (MLP on the policy's actions on learned probing states), `"probing+params"`,
      `"unf"` (`nfn` invariant encoder over the policy's weight space), `"unf+params"`.
    - `policy`: an example policy (its shapes size the critic).
    - `key`: PRNG key of the initialisation.
    - `width`, `depth`: the hidden layers of the critic's MLP (`eqx.nn.MLP`).
    - `options`: critic-specific options, e.g. `probing_states` and `observation_stats`
      (probing critics) or `unf_channels`, `unf_depth`, `unf_features`, `unf_layer_norm`,
      `canonicalize` (UNF critics).
    """
    if name not in _CRITICS:
        raise ValueError(f"unknown critic {name!r}; known: {', '.join(critic_names())}")
    accepted = critic_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"critic {name!r} takes no option(s) {', '.join(unknown)}; it accepts: "
            f"{', '.join(accepted) or 'none'}"
        )
    return _CRITICS[name](policy, width=width, depth=depth, key=key, **options)
