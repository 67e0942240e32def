"""Optimisers that skip a step whose gradient is not finite, and the count of skipped steps."""

import optax
from jaxtyping import Array, Int

# Never give up skipping: a run whose gradients stay non-finite must not start applying them.
_NEVER_ACCEPT = 2**31 - 1


def skip_nonfinite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` wrapped in `optax.apply_if_finite`: a step whose gradients hold NaN or inf
    leaves the parameters and the inner state unchanged and is counted (`skipped_steps`)."""
    return optax.apply_if_finite(optimizer, max_consecutive_errors=_NEVER_ACCEPT)


def skipped_steps(opt_state: optax.ApplyIfFiniteState) -> Int[Array, ""]:
    """How many steps a `skip_nonfinite` optimiser has skipped since its `init`."""
    return opt_state.total_notfinite
