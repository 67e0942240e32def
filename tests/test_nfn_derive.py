"""Deriving weight spaces from Equinox models: activations of `eqx.nn.MLP`, shared arrays, and
more layer types; each derived symmetry is checked against the model (function preservation)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import (
    assert_close_scaled,
    host_normal,
    host_permutation,
    original_and_permuted,
    permuted_model,
)

import nfn

KEY = jax.random.key(0)


def raises_naming(*fragments):
    return pytest.raises(
        ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    )


def spec_of(space):
    return {leaf.path: leaf.axes for leaf in space}


# --------------------------------------------------------------------------- MLP activations


def _scale_by_position(x):
    # Not permutation-equivariant on a vector: entry i is scaled by i.
    return x * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)


@pytest.mark.parametrize("io", ["fixed", "permuted"])
def test_mlp_with_position_dependent_activation_is_a_barrier(io):
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=_scale_by_position, key=KEY)
    space = nfn.weight_space(mlp, io=io)
    hidden = [leaf.axes for leaf in space if leaf.path.startswith(".layers[1]")]
    assert all(a is None for axes in hidden for a in axes)
    assert all(leaf.axes[0] is None for leaf in space if leaf.path.startswith(".layers[0]"))


def test_mlp_with_position_dependent_final_activation_fixes_outputs():
    mlp = eqx.nn.MLP(3, 2, 4, 1, final_activation=_scale_by_position, key=KEY)
    space = nfn.weight_space(mlp, io="permuted")
    assert spec_of(space)[".layers[1].weight"][0] is None
    assert spec_of(space)[".layers[1].bias"] == (None,)
    # The hidden neurons are untouched by the final activation.
    assert spec_of(space)[".layers[1].weight"][1] is not None


def _centre(x):
    # Mixes entries (subtracts their mean) but commutes with permuting them.
    return x - jnp.mean(x)


def test_mlp_with_equivariant_non_elementwise_activation_keeps_symmetry():
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=_centre, key=KEY)
    space = nfn.weight_space(mlp)
    assert space.sizes == {0: 4, 1: 4}


@settings(max_examples=4, deadline=None)
@given(st.sampled_from([jax.nn.relu, _centre, _scale_by_position]), st.integers(0, 2**30))
def test_mlp_activation_symmetry_preserves_function(activation, seed):
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=activation, final_activation=activation, key=KEY)
    for io in ("fixed", "permuted"):
        space = nfn.weight_space(mlp, io=io)
        perm, x = host_permutation(space.sizes, seed), host_normal(seed, (5, 3))
        if io == "permuted":
            # Only hidden ids may keep the function; the boundary ids are the network's I/O.
            boundary = {space.leaves[0].axes[1], space.leaves[-1].axes[0]} - {None}
            perm = {g: (jnp.arange(len(p)) if g in boundary else p) for g, p in perm.items()}
        assert_close_scaled(*original_and_permuted(mlp, space, perm, x))


def test_mlp_with_learned_activation_one_hidden_layer():
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=eqx.nn.PReLU(), key=KEY)
    space = nfn.weight_space(mlp)
    spec = spec_of(space)
    assert spec[".activation.negative_slope"] == (None, 0)
    perm = {0: jnp.asarray([2, 0, 3, 1])}
    params, static = eqx.partition(mlp, eqx.is_array)
    # Make the per-neuron slopes differ, so a wrong action would show.
    params = eqx.tree_at(
        lambda p: p.activation.negative_slope, params, jnp.asarray([[0.1, 0.5, 0.9, 0.3]])
    )
    mlp = eqx.combine(params, static)
    assert_close_scaled(*original_and_permuted(mlp, space, perm, host_normal(0, (5, 3)) * 3))


def test_mlp_with_learned_activation_deep_fixes_hidden_neurons():
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=eqx.nn.PReLU(), key=KEY)
    space = nfn.weight_space(mlp)
    assert space.sizes == {}
    assert spec_of(space)[".activation.negative_slope"] == (None, None)


# --------------------------------------------------------------------------- shared arrays


def test_shared_array_is_rejected_naming_both_leaves():
    lin = eqx.nn.Linear(4, 4, key=KEY)
    model = eqx.nn.Sequential([lin, eqx.nn.Lambda(jax.nn.relu), lin])
    with raises_naming(".layers[0].weight", ".layers[2].weight", "same array"):
        nfn.weight_space(model)


def test_scan_mlp_is_rejected_clearly():
    mlp = eqx.nn.MLP(3, 2, 4, 3, scan=True, key=KEY)
    with raises_naming("scan=True", "MLP", "WeightSpace.from_spec"):
        nfn.weight_space(mlp)


# --------------------------------------------------------------------------- more layer types


def _keys(seed, n):
    return list(jax.random.split(jax.random.key(seed), n))


@st.composite
def pooled_conv_nets(draw):
    """Conv -> relu -> pool -> conv, 1d or 2d, with every kind of pooling layer."""
    dims = draw(st.sampled_from([1, 2]))
    conv = eqx.nn.Conv1d if dims == 1 else eqx.nn.Conv2d
    pools = {
        1: [
            eqx.nn.MaxPool1d(2),
            eqx.nn.AvgPool1d(2, stride=1),
            eqx.nn.AdaptiveAvgPool1d(3),
            eqx.nn.AdaptiveMaxPool1d(2),
        ],
        2: [
            eqx.nn.MaxPool2d(2),
            eqx.nn.AvgPool2d(2, stride=1),
            eqx.nn.AdaptiveAvgPool2d((3, 3)),
            eqx.nn.AdaptiveMaxPool2d(2),
        ],
    }[dims]
    pool = draw(st.sampled_from(pools))
    c = [draw(st.integers(1, 4)) for _ in range(3)]
    k = _keys(draw(st.integers(0, 2**30)), 2)
    model = eqx.nn.Sequential(
        [
            conv(c[0], c[1], 3, padding="SAME", key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            pool,
            conv(c[1], c[2], 1, key=k[1]),
        ]
    )
    return model, (c[0],) + (6,) * dims


@settings(max_examples=6, deadline=None)
@given(pooled_conv_nets(), st.integers(0, 2**30))
def test_pooling_passes_channels_through(drawn, seed):
    model, input_shape = drawn
    space = nfn.weight_space(model)
    assert space.sizes == {0: model.layers[0].out_channels}
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (2, *input_shape))
    assert_close_scaled(*original_and_permuted(model, space, perm, x))


@st.composite
def layer_norm_nets(draw):
    h = draw(st.integers(2, 6))
    k = _keys(draw(st.integers(0, 2**30)), 3)
    use_weight, use_bias = draw(st.booleans()), draw(st.booleans())

    def norm(shape):
        ln = eqx.nn.LayerNorm(shape, use_weight=use_weight, use_bias=use_bias)
        # Distinct per-entry affine parameters, so a wrong action would show.
        rng = np.random.default_rng(draw(st.integers(0, 2**30)))
        for name in ("weight", "bias"):
            if getattr(ln, name) is not None:
                value = jnp.asarray(rng.standard_normal(shape), jnp.float32)
                ln = eqx.tree_at(lambda m, name=name: getattr(m, name), ln, value)
        return ln

    model = eqx.nn.Sequential(
        [
            norm(3),
            eqx.nn.Linear(3, h, key=k[0]),
            norm(h),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(h, h, key=k[1]),
            eqx.nn.Lambda(jnp.tanh),
            norm(h),
            eqx.nn.Linear(h, 2, key=k[2]),
        ]
    )
    return model


@settings(max_examples=6, deadline=None)
@given(layer_norm_nets(), st.integers(0, 2**30))
def test_layer_norm_parameters_follow_their_neurons(model, seed):
    space = nfn.weight_space(model)
    spec = spec_of(space)
    if model.layers[2].weight is not None:
        assert spec[".layers[2].weight"] == (0,)
    if model.layers[0].weight is not None:
        assert spec[".layers[0].weight"] == (None,)  # the network's inputs: fixed
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (5, 3))
    assert_close_scaled(*original_and_permuted(model, space, perm, x))
    permuted = nfn.weight_space(model, io="permuted")
    if model.layers[0].weight is not None:
        assert spec_of(permuted)[".layers[0].weight"] == (0,)


def test_conv_layer_norm_follows_channels():
    k = _keys(1, 2)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, 3, key=k[0]),
            eqx.nn.LayerNorm((3, 4, 4)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(3, 2, 1, key=k[1]),
        ]
    )
    rng = np.random.default_rng(0)
    model = eqx.tree_at(
        lambda m: (m.layers[1].weight, m.layers[1].bias),
        model,
        tuple(jnp.asarray(rng.standard_normal((3, 4, 4)), jnp.float32) for _ in range(2)),
    )
    space = nfn.weight_space(model)
    assert spec_of(space)[".layers[1].weight"] == (0, None, None)
    perm = {0: jnp.asarray([2, 0, 1])}
    assert_close_scaled(*original_and_permuted(model, space, perm, host_normal(2, (2, 2, 6, 6))))


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**30))
def test_embedding_outputs_are_permuted_like_neurons(width, seed):
    k = _keys(seed, 2)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Embedding(7, width, key=k[0]),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Linear(width, 2, key=k[1]),
        ]
    )
    space = nfn.weight_space(model)
    assert spec_of(space)[".layers[0].weight"] == (None, 0)
    assert spec_of(nfn.weight_space(model, io="permuted"))[".layers[0].weight"] == (0, 1)
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, 7, 9))
    assert_close_scaled(
        *original_and_permuted(model, space, host_permutation(space.sizes, seed), tokens)
    )


@st.composite
def residual_nets(draw):
    h, m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = _keys(draw(st.integers(0, 2**30)), 5)
    blocks = [
        nfn.Residual(
            eqx.nn.Sequential(
                [
                    eqx.nn.Linear(h, m, key=k[1 + b]),
                    eqx.nn.Lambda(jax.nn.relu),
                    eqx.nn.Linear(m, h, key=k[3 + b]),
                ]
            )
        )
        for b in range(draw(st.integers(1, 2)))
    ]
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, h, key=k[0]),
            *blocks,
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(h, 2, key=k[0]),
        ]
    )


@settings(max_examples=6, deadline=None)
@given(residual_nets(), st.integers(0, 2**30))
def test_residual_stream_and_block_outputs_share_an_id(model, seed):
    space = nfn.weight_space(model)
    spec = spec_of(space)
    stream = spec[".layers[0].weight"][0]
    assert stream is not None
    assert spec[".layers[1].body.layers[2].weight"][0] == stream
    assert spec[".layers[1].body.layers[0].weight"][1] == stream
    assert spec[f".layers[{len(model.layers) - 1}].weight"][1] == stream
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (5, 3))
    assert_close_scaled(*original_and_permuted(model, space, perm, x))


def test_residual_body_ending_in_a_barrier_fixes_the_stream():
    k = _keys(3, 3)
    body = eqx.nn.Sequential(
        [eqx.nn.Linear(4, 4, key=k[1]), eqx.nn.Lambda(jnp.cumsum)]  # cumsum mixes neurons
    )
    model = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 4, key=k[0]), nfn.Residual(body), eqx.nn.Linear(4, 2, key=k[2])]
    )
    space = nfn.weight_space(model)
    assert space.sizes == {}
    assert spec_of(space)[".layers[0].weight"] == (None, None)


class _Block(eqx.Module):
    """A user-defined residual MLP block: x + down(relu(up(x)))."""

    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        return x + self.down(jax.nn.relu(self.up(x)))


def _describe_block(block):
    return nfn.Residual(eqx.nn.Sequential([block.up, eqx.nn.Lambda(jax.nn.relu), block.down]))


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**30))
def test_hooks_describe_user_modules(seed):
    k = _keys(seed, 4)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=k[0]),
            _Block(eqx.nn.Linear(4, 6, key=k[1]), eqx.nn.Linear(6, 4, key=k[2])),
            eqx.nn.Linear(4, 2, key=k[3]),
        ]
    )
    with raises_naming("_Block", "layers[1]", "hooks="):
        nfn.weight_space(model)
    space = nfn.weight_space(model, hooks={_Block: _describe_block})
    assert spec_of(space)[".layers[1].up.weight"] == (1, 0)
    assert spec_of(space)[".layers[1].down.weight"] == (0, 1)
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (5, 3))
    assert_close_scaled(*original_and_permuted(model, space, perm, x))


# --------------------------------------------------------------------------- packed axes


def permute_state(state, perm):
    return jax.tree.map(lambda s: s[perm], state)


@eqx.filter_jit
def _unrolled_states(cell, permuted, xs, state, perm):
    """Final states of `cell` from `state` and of `permuted` from the permuted `state`."""

    def run(c, s):
        for x in xs:
            s = c(x, s)
        return s

    return permute_state(run(cell, state), perm), run(permuted, permute_state(state, perm))


@settings(max_examples=6, deadline=None)
@given(
    st.sampled_from(["lstm", "gru"]),
    st.integers(1, 5),
    st.booleans(),
    st.sampled_from(["fixed", "permuted"]),
    st.integers(0, 2**30),
)
def test_recurrent_cells_permute_each_gate_block_by_the_hidden_id(kind, hidden, bias, io, seed):
    cls = eqx.nn.LSTMCell if kind == "lstm" else eqx.nn.GRUCell
    cell = cls(3, hidden, use_bias=bias, key=jax.random.key(seed))
    if bias:
        # Nonzero biases everywhere, so a wrong action on them would show.
        rng = np.random.default_rng(seed)
        cell = jax.tree.map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype) if eqx.is_array(x) else x,
            cell,
        )
    space = nfn.weight_space(cell, io=io)
    (h,) = [g for g in space.sizes if space.sizes[g] == hidden and g == space.leaves[1].axes[1]]
    perm = host_permutation(space.sizes, seed)
    if io == "permuted":
        perm = {g: p if g == h else jnp.arange(len(p)) for g, p in perm.items()}
    p = perm[h]
    zeros = jnp.zeros(hidden)
    state = (
        (host_normal(seed, (hidden,)), zeros) if kind == "lstm" else host_normal(seed, (hidden,))
    )
    xs = host_normal(seed + 1, (4, 3))
    expected, actual = _unrolled_states(cell, permuted_model(cell, space, perm), xs, state, p)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
        assert_close_scaled(a, b)


def test_packed_spec_layout_and_a_permutation_of_whole_gate_blocks_breaks_the_cell():
    cell = eqx.nn.LSTMCell(2, 3, key=KEY)
    space = nfn.weight_space(cell)
    leaf = space.leaves[0]
    assert leaf.stored_shape == (12, 2) and leaf.shape == (4, 3, 2)
    assert leaf.axes == (None, 0, None)
    # Permuting the packed axis as one axis of 12 (mixing gates) is not a symmetry.
    params, static = eqx.partition(cell, eqx.is_array)
    order = jnp.asarray([3, 4, 5, 0, 1, 2, 6, 7, 8, 9, 10, 11])  # swap the input and forget gates
    broken = eqx.combine(
        eqx.tree_at(
            lambda c: (c.weight_ih, c.weight_hh, c.bias),
            params,
            (params.weight_ih[order], params.weight_hh[order], params.bias[order]),
        ),
        static,
    )
    x, state = host_normal(0, (2,)), (host_normal(1, (3,)), host_normal(2, (3,)))
    assert float(jnp.max(jnp.abs(cell(x, state)[0] - broken(x, state)[0]))) > 1e-3


@settings(max_examples=6, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.booleans(),
    st.integers(0, 2**30),
)
def test_attention_heads_and_head_dimensions(heads, qk, vo, bias, seed):
    mha = eqx.nn.MultiheadAttention(
        heads,
        5,
        qk_size=qk,
        vo_size=vo,
        use_query_bias=bias,
        use_key_bias=bias,
        use_value_bias=bias,
        use_output_bias=bias,
        key=jax.random.key(seed),
    )
    if bias:
        rng = np.random.default_rng(seed)
        mha = jax.tree.map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype) if eqx.is_array(x) else x,
            mha,
        )
    space = nfn.weight_space(mha)
    assert space.sizes == {0: heads, 1: qk, 2: vo}
    perm = host_permutation(space.sizes, seed)
    x = host_normal(seed, (4, 5))
    permuted = permuted_model(mha, space, perm)
    assert_close_scaled(eqx.filter_jit(mha)(x, x, x), eqx.filter_jit(permuted)(x, x, x))


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**30))
def test_layers_on_packed_spaces_are_equivariant(seed):
    cell = eqx.nn.GRUCell(2, 3, key=jax.random.key(seed))
    space = nfn.weight_space(cell)
    layer = nfn.EquivariantLinear(space, 1, 2, key=jax.random.key(1))
    encoder = nfn.InvariantEncoder(space, 2, hidden_channels=2, depth=1, key=jax.random.key(2))
    f = nfn.to_features(eqx.filter(cell, eqx.is_array))
    perm = host_permutation(space.sizes, seed)
    fp = nfn.permute(space, f, perm, channels=True)
    for a, b in zip(
        jax.tree.leaves(nfn.permute(space, layer(f), perm, channels=True)),
        jax.tree.leaves(layer(fp)),
    ):
        assert_close_scaled(a, b)
    assert_close_scaled(encoder(f), encoder(fp))


def test_mlp_depth_zero_with_learned_activation():
    # Equinox still keeps (empty) per-neuron activation parameters for zero hidden layers.
    mlp = eqx.nn.MLP(3, 2, 4, 0, activation=eqx.nn.PReLU(), key=KEY)
    space = nfn.weight_space(mlp)
    assert spec_of(space)[".layers[0].weight"] == (None, None)


class _TransformerBlock(eqx.Module):
    """Pre-LayerNorm transformer block on a sequence `(tokens, d)`."""

    ln1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = jax.vmap(self.ln1)(x)
        x = x + self.attention(h, h, h)
        h = jax.vmap(self.ln2)(x)
        return x + jax.vmap(lambda t: self.down(jax.nn.gelu(self.up(t))))(h)


class _TinyTransformer(eqx.Module):
    embed: eqx.nn.Linear
    blocks: tuple[_TransformerBlock, ...]
    unembed: eqx.nn.Linear

    def __call__(self, x):
        x = jax.vmap(self.embed)(x)
        for block in self.blocks:
            x = block(x)
        return jax.vmap(self.unembed)(x)


def _describe_transformer_block(block):
    return eqx.nn.Sequential(
        [
            nfn.Residual(eqx.nn.Sequential([block.ln1, block.attention])),
            nfn.Residual(
                eqx.nn.Sequential([block.ln2, block.up, eqx.nn.Lambda(jax.nn.gelu), block.down])
            ),
        ]
    )


def _describe_transformer(model):
    return eqx.nn.Sequential([model.embed, *model.blocks, model.unembed])


@settings(max_examples=3, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(0, 2**30))
def test_transformer_blocks_through_hooks_keep_their_function(heads, num_blocks, seed):
    d, k = 2 * heads, _keys(seed, 3 + 5 * num_blocks)
    rng = np.random.default_rng(seed)

    def norm():
        ln = eqx.nn.LayerNorm(d)
        return eqx.tree_at(
            lambda m: (m.weight, m.bias),
            ln,
            tuple(jnp.asarray(rng.standard_normal(d), jnp.float32) for _ in range(2)),
        )

    blocks = tuple(
        _TransformerBlock(
            norm(),
            eqx.nn.MultiheadAttention(
                heads, d, use_query_bias=True, use_output_bias=True, key=k[3 + 5 * b]
            ),
            norm(),
            eqx.nn.Linear(d, 3, key=k[4 + 5 * b]),
            eqx.nn.Linear(3, d, key=k[5 + 5 * b]),
        )
        for b in range(num_blocks)
    )
    model = _TinyTransformer(eqx.nn.Linear(3, d, key=k[0]), blocks, eqx.nn.Linear(d, 2, key=k[1]))
    hooks = {
        _TinyTransformer: _describe_transformer,
        _TransformerBlock: _describe_transformer_block,
    }
    space = nfn.weight_space(model, hooks=hooks)
    stream = spec_of(space)[".embed.weight"][0]
    assert spec_of(space)[".blocks[0].ln1.weight"] == (stream,)
    assert spec_of(space)[".unembed.weight"] == (None, stream)
    perm = host_permutation(space.sizes, seed)
    x = host_normal(seed, (4, 3))
    expected = eqx.filter_jit(model)(x)
    actual = eqx.filter_jit(permuted_model(model, space, perm))(x)
    assert_close_scaled(expected, actual)
