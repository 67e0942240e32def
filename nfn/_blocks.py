"""Building blocks of networks whose weight space `nfn.weight_space` can derive."""

from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray


class Residual(eqx.Module):
    """A residual block: `x + body(x)`.

    [`nfn.weight_space`][] permutes the neurons of the stream `x` and the outputs of `body`
    together (one id), so the sum is permuted consistently. If `body` ends in a barrier (a
    function that may mix neurons), the stream's neurons are fixed instead, everywhere they
    appear.
    """

    body: Any

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        return x + self.body(x, key=key)
