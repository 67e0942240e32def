"""A straightforward per-term implementation of the complete equivariant linear map (UNF).

The baseline for `benchmarks/unf_layer.py`. For every (output leaf, input leaf, set partition of
the pair's permuted axes into single-id blocks) it runs one chain of small ops, exactly as the
basis is written down in `shared/design/weight_space.md`:

1. diagonal extraction: input axes in one block share an einsum letter;
2. mean over the blocks with no output axis;
3. channel mix with that term's own `(fan_in, fan_out)` matrix;
4. broadcast to the blocks with no input axis;
5. diagonal write: output axes in one block are filled by multiplying with a materialised
   delta tensor `(n,) * k`.

So the number of op chains is the number of basis terms, O(leaves^2), with no pooling shared
between output leaves and no grouping. Fixed axes are folded into the channels, as in nfn.

`NaiveEquivariantLinear.from_nfn(layer)` takes an `nfn.EquivariantLinear`'s parameters (slicing
its pooled matrix into the per-term blocks), so both compute the same function and the benchmark
compares like with like; `check_against_nfn` verifies that numerically.
"""

import dataclasses
import string

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nfn
from nfn._partitions import id_partitions

LETTERS = string.ascii_lowercase + string.ascii_uppercase


def _set_partitions(items):
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for partition in _set_partitions(rest):
        out.append([[first], *partition])
        for k in range(len(partition)):
            out.append([*partition[:k], [first, *partition[k]], *partition[k + 1 :]])
    return out


def _single_id_partitions(ids):
    """Set partitions of positions 0..len(ids)-1 whose blocks hold one id, blocks sorted."""
    groups = {}
    for position, pid in enumerate(ids):
        groups.setdefault(pid, []).append(position)
    partitions = [[]]
    for positions in groups.values():
        partitions = [p + q for p in partitions for q in _set_partitions(positions)]
    return [sorted(tuple(sorted(b)) for b in p) for p in partitions]


@dataclasses.dataclass(frozen=True)
class NaiveTerm:
    """One basis map: blocks of (output axis positions, input axis positions)."""

    out_leaf: int
    in_leaf: int
    blocks: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


def naive_terms(space, out_space=None):
    out_space = space if out_space is None else out_space
    terms = []
    for i, out_leaf in enumerate(out_space.leaves):
        out_ids = out_leaf.permuted_ids
        for j, in_leaf in enumerate(space.leaves):
            in_ids = in_leaf.permuted_ids
            n_out = len(out_ids)
            for partition in _single_id_partitions(out_ids + in_ids):
                blocks = tuple(
                    (
                        tuple(p for p in block if p < n_out),
                        tuple(p - n_out for p in block if p >= n_out),
                    )
                    for block in partition
                )
                terms.append(NaiveTerm(i, j, blocks))
    return terms


def _fold(leaf, x):
    order = (*leaf.permuted_positions, *leaf.fixed_positions, len(leaf.shape))
    return jnp.transpose(x, order).reshape((*leaf.permuted_shape, -1))


def _unfold(leaf, y):
    fixed_shape = tuple(leaf.shape[k] for k in leaf.fixed_positions)
    y = y.reshape((*leaf.permuted_shape, *fixed_shape, -1))
    order = (*leaf.permuted_positions, *leaf.fixed_positions, len(leaf.shape))
    return jnp.transpose(y, np.argsort(order))


def _delta(n, k):
    """Materialised delta tensor: (n,)*k, one where all indices are equal."""
    d = np.zeros((n,) * k, np.float32)
    d[(np.arange(n),) * k] = 1.0
    return d


def _write(values, block_letters, out_blocks, num_out_axes, sizes):
    """`values` has one axis per output block (full size) and a channel axis; write diagonals."""
    operands, subs = [values], ["".join(block_letters) + "z"]
    out_letters = [""] * num_out_axes
    spare = iter(LETTERS[len(block_letters) :])
    for letter, block, n in zip(block_letters, out_blocks, sizes):
        letters = [letter] + [next(spare) for _ in block[1:]]
        for position, c in zip(block, letters):
            out_letters[position] = c
        if len(block) > 1:
            operands.append(jnp.asarray(_delta(n, len(block)), values.dtype))
            subs.append("".join(letters))
    return jnp.einsum(f"{','.join(subs)}->{''.join(out_letters)}z", *operands)


def apply_term(term, x, weight, out_leaf, in_leaf):
    """One basis map on a folded input leaf `x` (permuted axes..., fan_in)."""
    in_letters = [""] * len(in_leaf.permuted_ids)
    with_in = []
    for b, (_, ins) in enumerate(term.blocks):
        for position in ins:
            in_letters[position] = LETTERS[b]
        if ins:
            with_in.append(b)
    # 1. diagonal extraction: one axis per block holding input axes.
    d = jnp.einsum(f"{''.join(in_letters)}y->{''.join(LETTERS[b] for b in with_in)}y", x)
    # 2. mean over blocks that do not reach the output.
    pooled_axes = tuple(k for k, b in enumerate(with_in) if not term.blocks[b][0])
    d = jnp.mean(d, axis=pooled_axes) if pooled_axes else d
    kept = [b for b in with_in if term.blocks[b][0]]
    # 3. channel mix.
    d = d @ weight
    # 4. broadcast to one full-size axis per output block.
    out_block_ids = [b for b, (outs, _) in enumerate(term.blocks) if outs]
    sizes = [
        out_leaf.shape[out_leaf.permuted_positions[term.blocks[b][0][0]]] for b in out_block_ids
    ]
    shape = tuple(d.shape[kept.index(b)] if b in kept else 1 for b in out_block_ids) + (
        d.shape[-1],
    )
    d = jnp.broadcast_to(d.reshape(shape), (*sizes, d.shape[-1]))
    # 5. diagonal write with delta tensors.
    out_blocks = [term.blocks[b][0] for b in out_block_ids]
    letters = [LETTERS[k] for k in range(len(out_block_ids))]
    return _write(d, letters, out_blocks, len(out_leaf.permuted_ids), sizes)


class NaiveEquivariantLinear(eqx.Module):
    weights: tuple
    biases: tuple
    space: object = eqx.field(static=True)
    out_space: object = eqx.field(static=True)
    terms: tuple = eqx.field(static=True)
    bias_partitions: tuple = eqx.field(static=True)

    @classmethod
    def from_nfn(cls, layer: nfn.EquivariantLinear) -> "NaiveEquivariantLinear":
        """The same function as `layer`: its pooled matrix, bias and coupled terms per term."""
        space, out_space = layer.space, layer.out_space
        cin, cout = layer.in_channels, layer.out_channels
        # rows of the pooled matrix: one block per (input leaf, partition of its axes)
        row, rows = 0, {}
        for j, leaf in enumerate(space.leaves):
            for q in id_partitions(leaf.permuted_ids):
                rows[(j, q)] = row
                row += leaf.fixed_size * cin
        col, cols = 0, {}
        for i, leaf in enumerate(out_space.leaves):
            for p in id_partitions(leaf.permuted_ids):
                cols[(i, p)] = col
                col += leaf.fixed_size * cout
        # nfn stacks the matrices of terms that land on the same output blocks, rows in term order.
        coupled = {}
        for bucket, stacked in zip(layer.plan.output_buckets, layer.bucket_weights()):
            row = 0
            for k in bucket:
                t = layer.terms[k]
                fan_in = space.leaves[t.in_leaf].fixed_size * cin
                key = (t.out_leaf, t.in_leaf, t.out_partition, t.in_subscripts)
                coupled[key] = stacked[row : row + fan_in]
                row += fan_in
        pooled = np.asarray(layer.pooled_weight)
        terms = naive_terms(space, out_space)
        weights = []
        for term in terms:
            out_leaf, in_leaf = out_space.leaves[term.out_leaf], space.leaves[term.in_leaf]
            out_p = tuple(sorted(outs for outs, _ in term.blocks if outs))
            in_p = tuple(sorted(ins for _, ins in term.blocks if ins))
            if all(not (outs and ins) for outs, ins in term.blocks):
                r, c = rows[(term.in_leaf, in_p)], cols[(term.out_leaf, out_p)]
                w = pooled[r : r + in_leaf.fixed_size * cin, c : c + out_leaf.fixed_size * cout]
                weights.append(jnp.asarray(w))
                continue
            p_index = id_partitions(out_leaf.permuted_ids).index(out_p)
            spare = iter(string.ascii_lowercase[len(out_p) :])
            in_letters = [""] * len(in_leaf.permuted_ids)
            for ins in in_p:
                outs = next(o for o, i in term.blocks if i == ins)
                c = string.ascii_lowercase[out_p.index(outs)] if outs else next(spare)
                for position in ins:
                    in_letters[position] = c
            key = (term.out_leaf, term.in_leaf, p_index, "".join(in_letters))
            weights.append(coupled[key])
        biases, bias_partitions = [], []
        if layer.bias is not None:
            bias = np.asarray(layer.bias)
            for (i, p), c in cols.items():
                width = out_space.leaves[i].fixed_size * cout
                biases.append(jnp.asarray(bias[c : c + width]))
                bias_partitions.append((i, p))
        return cls(
            tuple(weights), tuple(biases), space, out_space, tuple(terms), tuple(bias_partitions)
        )

    def __call__(self, features):
        leaves = jax.tree_util.tree_leaves(features)
        folded = [_fold(leaf, x) for leaf, x in zip(self.space.leaves, leaves)]
        totals = [0.0] * len(self.out_space.leaves)
        for term, weight in zip(self.terms, self.weights):
            out_leaf, in_leaf = (
                self.out_space.leaves[term.out_leaf],
                self.space.leaves[term.in_leaf],
            )
            totals[term.out_leaf] = totals[term.out_leaf] + apply_term(
                term, folded[term.in_leaf], weight, out_leaf, in_leaf
            )
        for (i, partition), b in zip(self.bias_partitions, self.biases):
            leaf = self.out_space.leaves[i]
            sizes = [leaf.permuted_shape[block[0]] for block in partition]
            values = jnp.broadcast_to(b, (*sizes, b.shape[-1]))
            letters = [LETTERS[k] for k in range(len(partition))]
            totals[i] = totals[i] + _write(
                values, letters, partition, len(leaf.permuted_ids), sizes
            )
        outputs = []
        for leaf, total, x in zip(self.out_space.leaves, totals, leaves):
            if isinstance(total, float):  # a leaf with no term at all (cannot happen: pooled)
                total = jnp.zeros((*leaf.permuted_shape, leaf.fixed_size * x.shape[-1]))
            outputs.append(_unfold(leaf, total))
        return self.out_space.unflatten(outputs)

    @property
    def num_terms(self) -> int:
        return len(self.terms)


def num_parameters(module) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(module, eqx.is_array)))


def check_against_nfn(space, in_channels=2, out_channels=3, *, key, batch=2, rtol=1e-5):
    """Build an nfn layer and its naive twin; return the max relative output difference.

    Also checks that both have the same number of basis terms and parameters, and that the
    naive layer is equivariant under a random permutation of every id.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    layer = nfn.EquivariantLinear(space, in_channels, out_channels, key=k1)
    layer = eqx.tree_at(lambda m: m.bias, layer, jax.random.normal(k3, layer.bias.shape))
    naive = NaiveEquivariantLinear.from_nfn(layer)
    assert naive.num_terms == nfn.count_equivariant_terms(space), (
        naive.num_terms,
        nfn.count_equivariant_terms(space),
    )
    assert num_parameters(naive) == num_parameters(layer)
    feats = space.unflatten(
        [
            jax.random.normal(jax.random.fold_in(k2, n), (batch, *leaf.shape, in_channels))
            for n, leaf in enumerate(space.leaves)
        ]
    )
    a = eqx.filter_jit(eqx.filter_vmap(layer))(feats)
    b = eqx.filter_jit(eqx.filter_vmap(naive))(feats)
    err = max(
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-12))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )
    single = jax.tree_util.tree_map(lambda x: x[0], feats)
    perm = nfn.sample_permutation(space, key=k3)
    call = eqx.filter_jit(naive)
    lhs = call(nfn.permute(space, single, perm))
    rhs = nfn.permute(space, call(single), perm)
    equi = max(
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12))
        for x, y in zip(jax.tree_util.tree_leaves(lhs), jax.tree_util.tree_leaves(rhs))
    )
    assert err < rtol and equi < rtol, (err, equi)
    return err, equi
