"""Hypothesis strategies for nfn tests: random weight spaces and random Equinox architectures,
and the checks that a permuted model computes the same function.

Weight spaces come as `(params, spec)` dicts of host (numpy) arrays, so drawing them compiles
nothing. Term counts are kept small (see `MAX_TERMS`) so that each drawn space compiles fast.
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import nfn

# Upper bound on the number of equivariant basis terms between leaf pairs that share an id: each
# such term is one einsum to compile.
MAX_TERMS = 150


def bell(n: int) -> int:
    """Bell numbers by the recurrence B(n+1) = sum_k C(n, k) B(k) (independent of nfn)."""
    b = [1]
    for m in range(n):
        b.append(sum(math.comb(m, k) * b[k] for k in range(m + 1)))
    return b[n]


def pair_terms(out_axes: tuple, in_axes: tuple) -> int:
    """Number of equivariant basis maps between two leaves: prod over ids of Bell(n_id)."""
    ids = [a for a in out_axes + in_axes if a is not None]
    return math.prod(bell(ids.count(g)) for g in set(ids))


def coupled_terms(spec: dict) -> int:
    axes = list(spec.values())
    return sum(
        pair_terms(o, i)
        for o, i in itertools.product(axes, axes)
        if {a for a in o if a is not None} & {a for a in i if a is not None}
    )


@st.composite
def leaf_axes(draw, num_ids: int, max_rank: int = 4):
    """Axes of one leaf: ints from `range(num_ids)` (possibly repeated: ties) or None."""
    rank = draw(st.integers(0, max_rank))
    kind = draw(st.sampled_from(["free", "tie2", "tie3"]))
    axes = [draw(st.one_of(st.none(), st.integers(0, num_ids - 1))) for _ in range(rank)]
    if kind != "free" and rank >= 2:
        # Force a tie of 2 or 3 axes of one id within this leaf.
        k = min(rank, 2 if kind == "tie2" else 3)
        pid = draw(st.integers(0, num_ids - 1))
        positions = draw(st.permutations(range(rank)))[:k]
        for p in positions:
            axes[p] = pid
    return tuple(axes)


@st.composite
def weight_spaces(
    draw,
    *,
    max_leaves: int = 6,
    max_rank: int = 4,
    max_size: int = 5,
    max_terms: int = MAX_TERMS,
    dtype=np.float32,
):
    """A random weight space: `(params, spec)` dicts with consistent sizes per id.

    1-`max_leaves` leaves of rank 0-`max_rank` (scalar leaves included), ids shared across
    leaves, ties of 2 and 3 axes within a leaf, fixed axes, sizes 1-`max_size` (size 1
    included).
    """
    num_ids = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, max_size)) for _ in range(num_ids)]
    num_leaves = draw(st.integers(1, max_leaves))
    spec = {}
    for k in range(num_leaves):
        axes = draw(leaf_axes(num_ids, max_rank))
        trial = {**spec, f"w{k}": axes}
        if coupled_terms(trial) > max_terms:
            continue
        spec = trial
    if not spec:
        spec = {"w0": ()}
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    params = {}
    for name, axes in spec.items():
        shape = tuple(
            sizes[a] if a is not None else draw(st.integers(1, 3), label=f"{name} fixed size")
            for a in axes
        )
        params[name] = rng.standard_normal(shape).astype(dtype)
    return params, spec


def space_of(spec: dict, sizes: dict, fixed: int = 2) -> nfn.WeightSpace:
    """A weight space from a spec alone: id g has size sizes[g], every fixed axis size `fixed`."""
    params = {
        name: np.zeros(tuple(sizes[a] if a is not None else fixed for a in axes), np.float32)
        for name, axes in spec.items()
    }
    return nfn.WeightSpace.from_spec(params, spec)


def features_of(space, channels: int, seed: int, dtype=np.float32):
    """Standard normal features of `space` with `channels` channels, drawn on the host."""
    rng = np.random.default_rng(seed)
    leaves = [rng.standard_normal((*leaf.shape, channels)).astype(dtype) for leaf in space]
    return space.unflatten([jnp.asarray(x) for x in leaves])


def random_features(params: dict, channels: int, seed: int, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal((*np.shape(x), channels)).astype(dtype)
        for name, x in params.items()
    }


@st.composite
def mlps(draw, *, max_depth: int = 5, max_width: int = 8):
    """A random `eqx.nn.MLP`: depth 1-5, width 1-8, input/output sizes 1-4, with/without bias."""
    depth = draw(st.integers(1, max_depth))
    width = draw(st.integers(1, max_width))
    in_size = draw(st.integers(1, 4))
    out_size = draw(st.integers(1, 4))
    use_bias = draw(st.booleans())
    use_final_bias = draw(st.booleans())
    activation = draw(st.sampled_from([jax.nn.relu, jax.nn.tanh, jax.nn.gelu]))
    seed = draw(st.integers(0, 2**31 - 1))
    return eqx.nn.MLP(
        in_size,
        out_size,
        width,
        depth,
        activation=activation,
        use_bias=use_bias,
        use_final_bias=use_final_bias,
        key=jax.random.key(seed),
    )


@st.composite
def conv_nets(draw, *, max_layers: int = 3, max_channels: int = 4):
    """A random `eqx.nn.Sequential` of Conv1d/Conv2d layers with elementwise `Lambda`s between.

    Returns `(model, input_shape)`.
    """
    dims = draw(st.sampled_from([1, 2]))
    conv = eqx.nn.Conv1d if dims == 1 else eqx.nn.Conv2d
    num_layers = draw(st.integers(1, max_layers))
    channels = [draw(st.integers(1, max_channels)) for _ in range(num_layers + 1)]
    seed = draw(st.integers(0, 2**31 - 1))
    keys = jax.random.split(jax.random.key(seed), num_layers)
    layers = []
    for k in range(num_layers):
        if k > 0:
            act = draw(st.sampled_from([jax.nn.relu, jax.nn.tanh, jax.nn.sigmoid]))
            layers.append(eqx.nn.Lambda(act))
        layers.append(
            conv(
                channels[k],
                channels[k + 1],
                kernel_size=draw(st.integers(1, 3)),
                padding="SAME",
                use_bias=draw(st.booleans()),
                key=keys[k],
            )
        )
    spatial = (draw(st.integers(3, 5)),) * dims
    return eqx.nn.Sequential(layers), (channels[0], *spatial)


def permuted_model(model, space, perm):
    """`model` with `perm` applied to its parameters."""
    params, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(nfn.permute(space, params, perm), static)


@eqx.filter_jit
def original_and_permuted(model, space, perm, x):
    """Outputs of `model` and of `model` with `perm` applied to its parameters (one compile)."""
    return jax.vmap(model)(x), jax.vmap(permuted_model(model, space, perm))(x)


def assert_close_scaled(a, b, rel=1e-5):
    """`a` equals `b` up to `rel` times the larger of 1 and `a`'s largest magnitude."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(a))))
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


def host_permutation(sizes: dict, seed: int) -> dict:
    """A permutation per id (id -> size), drawn on the host: no compile."""
    return {
        g: jnp.asarray(np.random.default_rng([seed, g]).permutation(n)) for g, n in sizes.items()
    }


def host_normal(seed: int, shape: tuple) -> jnp.ndarray:
    """Standard normal float32 inputs drawn on the host."""
    return jnp.asarray(np.random.default_rng(seed + 1).standard_normal(shape), jnp.float32)


def max_abs(tree) -> float:
    return max(float(np.max(np.abs(np.asarray(x)), initial=0.0)) for x in jax.tree.leaves(tree))


def max_difference(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@eqx.filter_jit
def equivariance_pair(layer, space, out_space, x, perm):
    """(g . f(x), f(g . x)), or (f(x), f(g . x)) when `out_space` is None; f runs once on both."""
    ys = jax.vmap(layer)(nfn.stack([x, nfn.permute(space, x, perm, channels=True)]))
    y, y_g = jax.tree.map(lambda v: v[0], ys), jax.tree.map(lambda v: v[1], ys)
    if out_space is not None:
        y = nfn.permute(out_space, y, perm, channels=True)
    return y, y_g
