"""Permutation-invariant linear maps from a weight space to a vector."""

import math

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._basis import (
    Pooling,
    check_positive_ints,
    default_float,
    fold,
    normal_arrays,
    with_parameters,
    zeros,
)
from nfn._spec import WeightSpace


class InvariantLinear(eqx.Module):
    """The complete permutation-invariant linear map from features of a weight space to a vector.

    Every invariant linear functional of a leaf is a combination of its pooled statistics: for
    each partition of the leaf's permuted axes into blocks of one id, the mean over that
    partition's diagonal (the plain mean, the mean of a tie's diagonal, ...), with fixed axes and
    channels kept apart. All statistics of all leaves are concatenated and mixed by one matrix.
    """

    weight: Float[Array, "pooled out_features"]
    bias: Float[Array, " out_features"] | None
    space: WeightSpace = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    pooling: Pooling = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        in_channels: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        check_positive_ints(in_channels=in_channels, out_features=out_features)
        dtype = default_float(dtype)
        self.space = space
        self.in_channels, self.out_features = in_channels, out_features
        self.pooling = Pooling.of(space, in_channels)
        std = 1.0 / math.sqrt(self.pooling.width)
        (self.weight,) = normal_arrays(key, ((self.pooling.width, out_features),), (std,), dtype)
        self.bias = zeros((out_features,), dtype) if use_bias else None

    def with_space(self, space: WeightSpace) -> "InvariantLinear":
        """This layer, with the same parameters, on a space of other hidden widths (see
        [`nfn.WeightSpace.check_transferable_to`][]): its statistics are means, so their number
        does not depend on the sizes of permuted axes."""
        self.space.check_transferable_to(space)
        return with_parameters(
            self,
            lambda key: InvariantLinear(
                space,
                self.in_channels,
                self.out_features,
                use_bias=self.bias is not None,
                dtype=self.weight.dtype,
                key=key,
            ),
            lambda m: (m.weight, m.bias),
        )

    @property
    def num_statistics(self) -> int:
        """Width of the pooled vector: the number of invariant basis functionals."""
        return self.pooling.width

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> Float[Array, " out_features"]:
        leaves = self.space.flatten(features, channels=True)
        if leaves and leaves[0].shape[-1] != self.in_channels:
            raise ValueError(
                f"features have {leaves[0].shape[-1]} channels, layer expects {self.in_channels}"
            )
        folded = [fold(leaf, x) for leaf, x in zip(self.space, leaves)]
        out = self.pooling(folded) @ self.weight
        return out if self.bias is None else out + self.bias
