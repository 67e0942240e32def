"""Permutation-equivariant linear maps between weight spaces (Universal Neural Functionals)."""

import dataclasses
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from nfn._basis import (
    LETTERS,
    Pooling,
    block_sizes,
    check_positive_ints,
    default_float,
    expand_partition,
    fold_features,
    normal_arrays,
    subscripts,
    unfold,
    with_parameters,
    zeros,
)
from nfn._partitions import Partition, id_partitions, partial_matchings
from nfn._spec import LeafSpace, WeightSpace


@dataclasses.dataclass(frozen=True)
class CoupledTerm:
    """One basis map that keeps at least one index: some input block is matched to an output block.

    The input leaf's diagonal over `in_subscripts` is averaged over its unmatched blocks
    (`scale`), channel-mixed, and lands on the matched blocks (`out_subscripts`) of output
    partition `out_partition`; `kept` says which output blocks it fills (the rest broadcast).
    """

    out_leaf: int
    in_leaf: int
    out_partition: int
    in_subscripts: str
    out_subscripts: str
    kept: tuple[bool, ...]
    scale: float


def _coupled_terms(
    out_index: int, out_leaf: LeafSpace, in_index: int, in_leaf: LeafSpace
) -> list[CoupledTerm]:
    # Partitions of (output axes + input axes) into single-id blocks correspond one to one to
    # (output partition, input partition, partial matching of their blocks with equal ids).
    # Matchings that pair nothing are the pooled terms, handled once for all leaves elsewhere.
    terms = []
    out_ids, in_ids = out_leaf.permuted_ids, in_leaf.permuted_ids
    in_partitions = id_partitions(in_ids)
    for p_out, out_partition in enumerate(id_partitions(out_ids)):
        out_letters = list(LETTERS[: len(out_partition)])
        out_block_ids = [out_ids[block[0]] for block in out_partition]
        for in_partition in in_partitions:
            in_block_ids = [in_ids[block[0]] for block in in_partition]
            in_sizes = block_sizes(in_leaf, in_partition)
            for matching in _matchings_by_id(out_block_ids, in_block_ids):
                if not matching:
                    continue
                matched = dict((b_in, b_out) for b_out, b_in in matching)
                spare = iter(LETTERS[len(out_partition) :])
                in_letters = [
                    out_letters[matched[b]] if b in matched else next(spare)
                    for b in range(len(in_partition))
                ]
                kept = tuple(b in {b_out for b_out, _ in matching} for b in range(len(out_letters)))
                terms.append(
                    CoupledTerm(
                        out_leaf=out_index,
                        in_leaf=in_index,
                        out_partition=p_out,
                        in_subscripts=subscripts(in_partition, in_letters, len(in_ids)),
                        out_subscripts="".join(c for c, k in zip(out_letters, kept) if k),
                        kept=kept,
                        scale=1.0
                        / math.prod(s for b, s in enumerate(in_sizes) if b not in matched),
                    )
                )
    return terms


def _matchings_by_id(out_block_ids: list[int], in_block_ids: list[int]):
    """Partial matchings (out block, in block) that only pair blocks of one id."""
    per_id = []
    for pid in dict.fromkeys(out_block_ids):
        outs = [b for b, g in enumerate(out_block_ids) if g == pid]
        ins = [b for b, g in enumerate(in_block_ids) if g == pid]
        per_id.append(partial_matchings(outs, ins))
    combos = [()]
    for options in per_id:
        combos = [c + m for c in combos for m in options]
    return combos


@dataclasses.dataclass(frozen=True)
class _InputGroup:
    """Coupled terms that reduce one input leaf the same way (same diagonal, same pooled blocks).

    `in_subscripts`/`kept_subscripts` name the reduction with canonical letters; `orders[m]`
    permutes the kept axes into member `m`'s `out_subscripts` order.
    """

    in_leaf: int
    in_subscripts: str
    kept_subscripts: str
    members: tuple[int, ...]
    orders: tuple[tuple[int, ...], ...]


def _input_groups(terms: tuple[CoupledTerm, ...]) -> tuple[_InputGroup, ...]:
    groups: dict[tuple, tuple[list[int], list[tuple[int, ...]]]] = {}
    for k, term in enumerate(terms):
        names: dict[str, str] = {}
        for c in term.in_subscripts:
            names.setdefault(c, LETTERS[len(names)])
        in_subscripts = "".join(names[c] for c in term.in_subscripts)
        kept = set(term.out_subscripts)
        kept_subscripts = "".join(dict.fromkeys(names[c] for c in term.in_subscripts if c in kept))
        order = tuple(kept_subscripts.index(names[c]) for c in term.out_subscripts)
        members, orders = groups.setdefault(
            (term.in_leaf, in_subscripts, kept_subscripts), ([], [])
        )
        members.append(k)
        orders.append(order)
    return tuple(
        _InputGroup(in_leaf, in_sub, kept_sub, tuple(members), tuple(orders))
        for (in_leaf, in_sub, kept_sub), (members, orders) in groups.items()
    )


def _output_buckets(terms: tuple[CoupledTerm, ...]) -> tuple[tuple[int, ...], ...]:
    """Coupled terms that land on the same blocks of one output partition."""
    buckets: dict[tuple, list[int]] = {}
    for k, term in enumerate(terms):
        buckets.setdefault((term.out_leaf, term.out_partition, term.kept), []).append(k)
    return tuple(tuple(b) for b in buckets.values())


def _shared_matmuls(
    input_groups: tuple[_InputGroup, ...], output_buckets: tuple[tuple[int, ...], ...]
) -> tuple[tuple[int, ...], ...]:
    """Output buckets whose terms read the same reduced inputs in the same order.

    On an MLP, every leaf that carries a hidden id feeds the buckets of every output leaf that
    carries it, so those buckets concatenate identical inputs.
    """
    term_input = {}
    for g, group in enumerate(input_groups):
        for k, order in zip(group.members, group.orders):
            term_input[k] = (g, order)
    matmuls: dict[tuple, list[int]] = {}
    for b, bucket in enumerate(output_buckets):
        matmuls.setdefault(tuple(term_input[k] for k in bucket), []).append(b)
    return tuple(tuple(m) for m in matmuls.values())


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything an `EquivariantLinear` derives from its two spaces, built once per layer.

    - `pooling`: the pooled statistics of the input space (the terms that keep no index).
    - `terms`: the coupled terms, in the row order of the stacked matrices.
    - `out_partitions[i]`: the id partitions of output leaf `i`'s permuted axes; the pooled
      matrix has one column block per (leaf, partition), in this order.
    - `input_groups`: coupled terms that share one reduction of an input leaf.
    - `output_buckets`: coupled terms that land on the same output blocks, so that their sum is
      formed inside one matmul (their rows stacked in term order).
    - `matmuls`: output buckets that read the same inputs and so share one matmul, their
      columns side by side in this order; one matrix of `coupled_weights` each.
    """

    pooling: Pooling
    terms: tuple[CoupledTerm, ...]
    out_partitions: tuple[tuple[Partition, ...], ...]
    input_groups: tuple[_InputGroup, ...]
    output_buckets: tuple[tuple[int, ...], ...]
    matmuls: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, space: WeightSpace, out_space: WeightSpace, in_channels: int) -> "_Plan":
        terms = tuple(
            term
            for i, out_leaf in enumerate(out_space)
            for j, in_leaf in enumerate(space)
            if set(out_leaf.permuted_ids) & set(in_leaf.permuted_ids)
            for term in _coupled_terms(i, out_leaf, j, in_leaf)
        )
        input_groups, output_buckets = _input_groups(terms), _output_buckets(terms)
        return cls(
            pooling=Pooling.of(space, in_channels),
            terms=terms,
            out_partitions=tuple(id_partitions(leaf.permuted_ids) for leaf in out_space),
            input_groups=input_groups,
            output_buckets=output_buckets,
            matmuls=_shared_matmuls(input_groups, output_buckets),
        )


def _check_shared_sizes(space: WeightSpace, out_space: WeightSpace) -> None:
    in_sizes, out_sizes = space.sizes, out_space.sizes
    for pid in set(in_sizes) & set(out_sizes):
        if in_sizes[pid] != out_sizes[pid]:
            raise ValueError(
                f"permutation id {pid} has size {in_sizes[pid]} in the input space but "
                f"{out_sizes[pid]} in the output space"
            )


class EquivariantLinear(eqx.Module):
    """The complete permutation-equivariant linear map between two weight spaces.

    For every pair of (output leaf, input leaf) it learns one `(channels_in * fixed_in,
    channels_out * fixed_out)` matrix per basis map: one per set partition of the pair's permuted
    axes whose blocks hold axes of one id (any ranks, any number of tied axes). Fixed axes are
    folded into the channels and mixed densely. The bias is the complete equivariant bias of
    each output leaf (a constant per partition of its own axes, so diagonals of ties get their
    own constant).

    Terms that keep no index (the mean of an input leaf over its permuted axes, or over one of
    its diagonals, broadcast to an output leaf) exist for every pair of leaves; they are pooled
    once per input leaf and mixed by a single matrix, so cost and compile time grow with the
    number of coupled pairs (leaves that share an id), not with the square of the number of
    leaves. Terms that keep indices and land on the same blocks of one output leaf are one
    stacked matrix, each term's rows in the order of `terms`; stacked matrices whose terms read
    the same inputs sit side by side in one matrix of `coupled_weights` (see `bucket_weights`).

    Acts on the features of one network (every leaf `shape + (in_channels,)`); `vmap` for
    batches.
    """

    pooled_weight: Float[Array, "pooled total_out"]
    bias: Float[Array, " total_out"] | None
    coupled_weights: tuple[Float[Array, "stacked_fan_in fan_out"], ...]
    space: WeightSpace = eqx.field(static=True)
    out_space: WeightSpace = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    plan: _Plan = eqx.field(static=True)

    def __init__(
        self,
        space: WeightSpace,
        in_channels: int,
        out_channels: int,
        *,
        out_space: WeightSpace | None = None,
        use_bias: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `space`: the input weight space.
        - `in_channels`, `out_channels`: channels of the input and output features.
        - `out_space`: the output weight space (default: `space`). Ids shared by both spaces
          are the same permutation, so they must have the same size.
        - `use_bias`: whether to add the equivariant bias.
        - `dtype`: parameter dtype (default: JAX's default float).
        - `key`: PRNG key for the initialisation.

        Weights are drawn so that each output entry sums `T` terms of unit-variance inputs with
        variance `1/T` in total, keeping activations of order one.
        """
        out_space = space if out_space is None else out_space
        _check_shared_sizes(space, out_space)
        check_positive_ints(in_channels=in_channels, out_channels=out_channels)
        dtype = default_float(dtype)
        self.space, self.out_space = space, out_space
        self.in_channels, self.out_channels = in_channels, out_channels
        self.plan = _Plan.of(space, out_space, in_channels)
        self.pooled_weight, self.coupled_weights = self._initial_weights(dtype, key)
        self.bias = zeros((self.pooled_weight.shape[1],), dtype) if use_bias else None

    def _initial_weights(self, dtype, key: PRNGKeyArray) -> tuple[Array, tuple[Array, ...]]:
        plan, space, out_space = self.plan, self.space, self.out_space
        terms_into = [1] * len(out_space.leaves)
        for term in plan.terms:
            terms_into[term.out_leaf] += 1
        # The pooled matrix's column block of output leaf i has its own scale.
        column_stds = np.concatenate(
            [
                np.full(
                    len(plan.out_partitions[i]) * leaf.fixed_size * self.out_channels,
                    1.0 / math.sqrt(plan.pooling.width * terms_into[i]),
                )
                for i, leaf in enumerate(out_space)
            ]
        )
        shapes = [(plan.pooling.width, column_stds.size)]
        stds = [column_stds.astype(dtype)]
        for bucket in plan.output_buckets:
            out_leaf = plan.terms[bucket[0]].out_leaf
            fan_out = out_space.leaves[out_leaf].fixed_size * self.out_channels
            row_stds = []
            for k in bucket:
                term = plan.terms[k]
                fan_in = space.leaves[term.in_leaf].fixed_size * self.in_channels
                row_stds.append(
                    np.full(fan_in, 1.0 / math.sqrt(fan_in * terms_into[term.out_leaf]))
                )
            row_stds = np.concatenate(row_stds)
            shapes.append((row_stds.size, fan_out))
            stds.append(row_stds[:, None].astype(dtype))
        pooled, *stacked = normal_arrays(key, tuple(shapes), tuple(stds), dtype)
        return pooled, tuple(
            jnp.concatenate([stacked[b] for b in buckets], axis=1) for buckets in plan.matmuls
        )

    def with_space(
        self, space: WeightSpace, out_space: WeightSpace | None = None
    ) -> "EquivariantLinear":
        """This layer, with the same parameters, acting between spaces of other hidden widths.

        The parameters depend only on the spaces' leaves, axes, fixed sizes and channels, not on
        the sizes of permuted axes (terms average, they do not sum), so a layer trained on
        networks of one width applies to networks of another.

        **Arguments:**

        - `space`: the new input space; see [`nfn.WeightSpace.check_transferable_to`][].
        - `out_space`: the new output space; by default `space` if this layer maps a space to
          itself, else required.
        """
        if out_space is None:
            if self.out_space != self.space:
                raise ValueError(
                    "this layer maps between two different spaces; pass the new out_space too"
                )
            out_space = space
        self.space.check_transferable_to(space)
        self.out_space.check_transferable_to(out_space)
        return with_parameters(
            self,
            lambda key: EquivariantLinear(
                space,
                self.in_channels,
                self.out_channels,
                out_space=out_space,
                use_bias=self.bias is not None,
                dtype=self.pooled_weight.dtype,
                key=key,
            ),
            lambda m: (m.pooled_weight, m.bias, m.coupled_weights),
        )

    @property
    def pooling(self) -> Pooling:
        return self.plan.pooling

    @property
    def terms(self) -> tuple[CoupledTerm, ...]:
        """The coupled basis maps (those that keep an index), in the row order of
        `coupled_weights`."""
        return self.plan.terms

    def bucket_weights(self) -> tuple[Array, ...]:
        """The stacked matrix of each output bucket (`plan.output_buckets`), sliced out of
        `coupled_weights`."""
        weights = [None] * len(self.plan.output_buckets)
        for buckets, weight in zip(self.plan.matmuls, self.coupled_weights):
            offset = 0
            for b in buckets:
                width = self._fan_out(b)
                weights[b] = weight[:, offset : offset + width]
                offset += width
        return tuple(weights)

    def _fan_out(self, bucket: int) -> int:
        out_leaf = self.plan.terms[self.plan.output_buckets[bucket][0]].out_leaf
        return self.out_space.leaves[out_leaf].fixed_size * self.out_channels

    @property
    def out_partitions(self) -> tuple[int, ...]:
        """Number of id partitions of each output leaf's permuted axes."""
        return tuple(len(p) for p in self.plan.out_partitions)

    def __call__(self, features: PyTree[Float[Array, "..."]]) -> PyTree[Float[Array, "..."]]:
        """Map features of `space` (channels `in_channels`) to features of `out_space`."""
        folded = self._fold(features)
        accumulators = self._pooled_terms(folded)
        self._add_coupled_terms(accumulators, self._reduce_inputs(folded))
        return self._expand(accumulators)

    def _fold(self, features) -> list[Array]:
        return fold_features(self.space, features, self.in_channels)

    def _pooled_terms(self, folded: list[Array]) -> list[list[Array]]:
        """The terms that keep no index, plus the bias: one matmul for all leaf pairs.

        Returns `accumulators[i][p]`: values on the blocks of output partition `p` of leaf `i`,
        every block still of size 1 (broadcast later).
        """
        pooled = self.plan.pooling(folded) @ self.pooled_weight
        if self.bias is not None:
            pooled = pooled + self.bias
        accumulators = []
        offset = 0
        for leaf, partitions in zip(self.out_space, self.plan.out_partitions):
            width = leaf.fixed_size * self.out_channels
            per_partition = []
            for partition in partitions:
                chunk = pooled[offset : offset + width]
                per_partition.append(chunk.reshape((1,) * len(partition) + (width,)))
                offset += width
            accumulators.append(per_partition)
        return accumulators

    def _reduce_inputs(self, folded: list[Array]) -> dict[int, Array]:
        """Each coupled term's input: a diagonal of its input leaf, averaged over the blocks it
        does not keep, with the kept axes in the term's output order.

        Terms that read the same diagonal and pool the same blocks share one reduction.
        """
        reduced = {}
        for group in self.plan.input_groups:
            first = self.plan.terms[group.members[0]]
            value = first.scale * jnp.einsum(
                f"{group.in_subscripts}y->{group.kept_subscripts}y", folded[group.in_leaf]
            )
            for k, order in zip(group.members, group.orders):
                if order != tuple(range(len(order))):
                    reduced[k] = jnp.transpose(value, (*order, len(order)))
                else:
                    reduced[k] = value
        return reduced

    def _add_coupled_terms(
        self, accumulators: list[list[Array]], reduced: dict[int, Array]
    ) -> None:
        """Mix the coupled terms' channels and add them onto their output blocks.

        Terms onto the same output blocks are one matmul of their concatenated inputs against one
        stacked matrix, so the sum is formed inside the matmul; buckets with the same inputs
        share that matmul, so its input is read once and its backward is one matmul per
        direction instead of one per bucket summed (see docs/performance.md for the
        measurements behind this layout).
        """
        for buckets, weight in zip(self.plan.matmuls, self.coupled_weights):
            inputs = [reduced[k] for k in self.plan.output_buckets[buckets[0]]]
            mixed = (inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, -1)) @ weight
            offset = 0
            for b in buckets:
                width = self._fan_out(b)
                term = self.plan.terms[self.plan.output_buckets[b][0]]
                kept_sizes = iter(mixed.shape[:-1])
                shape = tuple(next(kept_sizes) if kept else 1 for kept in term.kept)
                acc = accumulators[term.out_leaf]
                acc[term.out_partition] = acc[term.out_partition] + mixed[
                    ..., offset : offset + width
                ].reshape((*shape, width))
                offset += width

    def _expand(self, accumulators: list[list[Array]]) -> PyTree[Array]:
        """Write every partition's values onto its diagonals and unfold to output features."""
        outputs = []
        for leaf, partitions, per_partition in zip(
            self.out_space, self.plan.out_partitions, accumulators
        ):
            num_axes = len(leaf.permuted_ids)
            total = 0.0
            for partition, values in zip(partitions, per_partition):
                sizes = block_sizes(leaf, partition)
                total = total + expand_partition(partition, sizes, values, num_axes)
            outputs.append(unfold(leaf, total))
        return self.out_space.unflatten(outputs)


def count_equivariant_terms(space: WeightSpace, out_space: WeightSpace | None = None) -> int:
    """Number of basis maps (excluding bias) between the permuted axes of every pair of leaves."""
    out_space = space if out_space is None else out_space
    pooled = len(Pooling.of(space, 1).statistics) * sum(
        len(id_partitions(leaf.permuted_ids)) for leaf in out_space
    )
    coupled = sum(
        len(_coupled_terms(i, o, j, n))
        for i, o in enumerate(out_space)
        for j, n in enumerate(space)
        if set(o.permuted_ids) & set(n.permuted_ids)
    )
    return pooled + coupled
