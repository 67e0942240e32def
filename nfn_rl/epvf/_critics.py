"""Policy-conditioned value functions V(policy) (flat, probing and UNF critics) and a registry
of them by name, so that a config can name its critic."""

import abc
import functools
import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PRNGKeyArray

import nfn


class Critic(eqx.Module):
    """An explicit policy-conditioned value function: `critic(policy)` predicts the policy's return.

    `policy` is the policy module itself (an `eqx.nn.MLP`). A critic is an MLP (`mlp`) on a
    representation of the policy (`representation`), which implementations define; both must be
    differentiable with respect to the policy's arrays, since the policy is improved by
    ascending the critic.
    """

    mlp: eqx.AbstractVar[eqx.nn.MLP]

    @abc.abstractmethod
    def representation(self, policy: eqx.Module) -> Float[Array, " features"]:
        """What the critic's MLP reads of `policy`."""

    def __call__(self, policy: eqx.Module) -> Float[Array, ""]:
        """The predicted undiscounted return of `policy`."""
        return self.mlp(self.representation(policy))

    def _mlp_for(
        self, policy: eqx.Module, *, width: int, depth: int, key: PRNGKeyArray
    ) -> eqx.nn.MLP:
        """The ReLU MLP that reads this critic's representation of policies shaped like
        `policy`, for the end of an `__init__` that has set what `representation` reads."""
        size = eqx.filter_eval_shape(lambda p: self.representation(p), policy).shape[0]
        return eqx.nn.MLP(size, "scalar", width, depth, activation=jax.nn.relu, key=key)

    def head_features(self, policy: eqx.Module) -> Float[Array, " hidden"]:
        """What the last linear layer of the critic's MLP reads of `policy`: the MLP's last
        hidden activations (the representation itself for an MLP of depth 0)."""
        x = self.representation(policy)
        for layer in self.mlp.layers[:-1]:
            x = self.mlp.activation(layer(x))
        return x


def flat_params(policy: eqx.Module) -> Float[Array, " params"]:
    """The concatenation of the policy's array leaves in tree order."""
    return ravel_pytree(eqx.filter(policy, eqx.is_array))[0]


class FlatCritic(Critic):
    """A ReLU MLP on the flattened policy parameters (Faccio et al.'s PSSVF critic)."""

    mlp: eqx.nn.MLP

    def __init__(self, policy: eqx.Module, *, width: int, depth: int, key: PRNGKeyArray):
        self.mlp = self._mlp_for(policy, width=width, depth=depth, key=key)

    def representation(self, policy: eqx.Module) -> Float[Array, " params"]:
        return flat_params(policy)


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
        self.with_params = with_params
        self.mlp = self._mlp_for(policy, width=width, depth=depth, key=mlp_key)

    def representation(self, policy: eqx.Module) -> Float[Array, " features"]:
        return _probing_representation(policy, self.probing_states, self.with_params)


def _probing_representation(policy, states, with_params: bool) -> Float[Array, " features"]:
    actions = jax.vmap(policy)(states).reshape(-1)
    return jnp.concatenate([actions, flat_params(policy)]) if with_params else actions


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
    mlp: eqx.nn.MLP
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
        self.mlp = self._mlp_for(policy, width=width, depth=depth, key=head_key)

    def representation(self, policy: eqx.Module) -> Float[Array, " features"]:
        params = eqx.filter(policy, eqx.is_array)
        if self.canonical_space is not None:
            params = nfn.canonicalize(self.canonical_space, params)
        features = jax.nn.relu(self.encoder(nfn.to_features(params)))
        if self.with_params:
            features = jnp.concatenate([features, ravel_pytree(params)[0]])
        return features


# The "+params" critics: the same classes with the flat parameters concatenated to their
# representation.
probing_plus_params = functools.partial(ProbingCritic, with_params=True)
unf_plus_params = functools.partial(UNFCritic, with_params=True)


def ridge_head(
    critic: Critic,
    features: Float[Array, "n hidden"],
    targets: Float[Array, " n"],
    valid: Bool[Array, " n"],
    *,
    penalty: float,
) -> Critic:
    """`critic` with the last linear layer of its MLP refitted in closed form: the ridge
    regression of the valid `targets` on the `features` (`critic.head_features` of each
    policy), with an unpenalised intercept.

    The penalty is `penalty` times the features' total centred sum of squares over their
    number, i.e. relative to their mean variance, so that one value suits features of any
    scale. As `penalty` grows, the fitted weights turn towards `features`' covariance with the
    targets: for features that are a policy's parameters and centred-rank targets, the ES
    gradient estimate. Solved in the primal or the dual, whichever is smaller.
    """
    count = jnp.maximum(jnp.sum(valid), 1)
    mean_x = jnp.sum(jnp.where(valid[:, None], features, 0.0), axis=0) / count
    mean_y = jnp.sum(jnp.where(valid, targets, 0.0)) / count
    x = jnp.where(valid[:, None], features - mean_x, 0.0)
    y = jnp.where(valid, targets - mean_y, 0.0)
    n, d = x.shape
    # A floor keeps the system positive definite when every feature is constant.
    lam = jnp.maximum(penalty * jnp.sum(x**2) / d, 1e-12)
    if d <= n:
        weight = jax.scipy.linalg.solve(x.T @ x + lam * jnp.eye(d), x.T @ y, assume_a="pos")
    else:
        weight = x.T @ jax.scipy.linalg.solve(x @ x.T + lam * jnp.eye(n), y, assume_a="pos")
    bias = mean_y - mean_x @ weight
    last = critic.mlp.layers[-1]
    return eqx.tree_at(
        lambda c: (c.mlp.layers[-1].weight, c.mlp.layers[-1].bias),
        critic,
        (weight.reshape(last.weight.shape), bias.reshape(last.bias.shape)),
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
    parameters = inspect.signature(_CRITICS[name]).parameters.values()
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
