"""Critics by name, so that a config can name its critic."""

import inspect
from collections.abc import Callable, Sequence

import equinox as eqx
from jaxtyping import PRNGKeyArray

from nfn_rl._critics import Critic, FlatCritic
from nfn_rl._critics_probing import ProbingCritic, probing_plus_params
from nfn_rl._critics_unf import UNFCritic, unf_plus_params

CriticFactory = Callable[..., Critic]
"""`factory(policy, hidden, *, key, **options) -> Critic`, the signature `make_critic` calls."""

_CRITICS: dict[str, CriticFactory] = {
    "flat": FlatCritic,
    "probing": ProbingCritic,
    "probing+params": probing_plus_params,
    "unf": UNFCritic,
    "unf+params": unf_plus_params,
}


def register_critic(name: str, factory: CriticFactory) -> None:
    """Make `make_critic(name, policy, key=..., hidden=...)` call `factory` with those arguments."""
    if name in _CRITICS:
        raise ValueError(f"critic {name!r} is already registered")
    _CRITICS[name] = factory


def critic_names() -> tuple[str, ...]:
    """The names `make_critic` knows."""
    return tuple(sorted(_CRITICS))


def critic_options(name: str) -> tuple[str, ...]:
    """The keyword options critic `name` accepts beyond `hidden` and `key`."""
    factory = _CRITICS[name]
    target = factory.__init__ if isinstance(factory, type) else factory
    parameters = inspect.signature(target).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("key", "with_params")
    )


def make_critic(
    name: str,
    policy: eqx.Module,
    *,
    key: PRNGKeyArray,
    hidden: Sequence[int] = (64, 64),
    **options,
) -> Critic:
    """The critic registered as `name`, sized for policies shaped like `policy`.

    **Arguments:**

    - `name`: one of `critic_names()`: `"flat"` (MLP on the concatenated parameters),
      `"probing"` (MLP on the policy's actions on learned probing states), `"probing+params"`,
      `"unf"` (`nfn` invariant encoder over the policy's weight space), `"unf+params"`.
    - `policy`: an example policy (its shapes size the critic).
    - `key`: PRNG key of the initialisation.
    - `hidden`: hidden widths of the critic's MLP.
    - `options`: critic-specific options, e.g. `probing_states` (probing critics) or
      `unf_channels`, `unf_depth`, `unf_features` (UNF critics).
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
    return _CRITICS[name](policy, tuple(hidden), key=key, **options)
