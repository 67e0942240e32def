"""Sign and scale symmetries: the records `nfn.weight_space` derives, `nfn.apply_symmetry`
preserving the function of real Equinox MLPs and CNNs, and `nfn.canonicalize` (function kept,
idempotent, invariant under random group elements, equivariant under permutations, its ties)."""

import pickle
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import assert_close_scaled, conv_nets, mlps

import nfn
import nfn.zoo

KEY = jax.random.key(0)


def raises_naming(*fragments):
    return pytest.raises(
        ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    )


def kinds(space):
    return {record.id: record.kind for record in space.symmetries}


def as_float64(model):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, model)


def outputs(model, params, x):
    return jax.vmap(eqx.combine(params, eqx.filter(model, eqx.is_array, inverse=True)))(x)


def max_difference(a, b):
    return max(
        (float(np.max(np.abs(np.asarray(u) - np.asarray(v)), initial=0.0)) for u, v in zip(a, b)),
        default=0.0,
    )


def leaves(tree):
    return jax.tree.leaves(tree)


# --------------------------------------------------------------------------- derived records


def test_mlp_records_name_the_incoming_and_outgoing_axes():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, key=KEY))
    assert space.symmetries == (
        nfn.NeuronSymmetry(0, "odd", ((".layers[0].weight", 0), (".layers[0].bias", 0)),
                           ((".layers[1].weight", 1),)),
        nfn.NeuronSymmetry(1, "odd", ((".layers[1].weight", 0), (".layers[1].bias", 0)),
                           ((".layers[2].weight", 1),)),
    )  # fmt: skip
    assert "activation symmetries: {0: odd, 1: odd}" in space.table()


@pytest.mark.parametrize(
    "activation, kind",
    [
        (jax.nn.relu, "homogeneous"),
        (jax.nn.leaky_relu, "homogeneous"),
        (jnp.tanh, "odd"),
        (jnp.sin, "odd"),
        (jax.nn.gelu, "none"),
        (jax.nn.sigmoid, "none"),
        (jax.nn.relu6, "none"),
    ],
)
def test_mlp_activation_kinds(activation, kind):
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 3, activation=activation, key=KEY))
    assert kinds(space) == {0: kind, 1: kind, 2: kind}


def test_input_and_output_neurons_are_none_with_io_permuted():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=KEY), io="permuted")
    assert kinds(space) == {0: "none", 1: "odd", 2: "none"}


def _seq(*layers):
    return eqx.nn.Sequential(list(layers))


def _lin(n_in, n_out, seed=0):
    return eqx.nn.Linear(n_in, n_out, key=jax.random.key(seed))


def _conv(c_in, c_out, seed=0):
    return eqx.nn.Conv2d(c_in, c_out, 3, padding="SAME", key=jax.random.key(seed))


@pytest.mark.parametrize(
    "model, expected",
    [
        # No activation in between: any nonzero factor.
        (_seq(_lin(3, 4), _lin(4, 2)), {0: "linear"}),
        (_seq(_lin(3, 4), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Lambda(jnp.tanh), _lin(4, 2)),
         {0: "none"}),
        (_seq(_lin(3, 4), eqx.nn.Dropout(0.5), eqx.nn.Lambda(jnp.tanh), _lin(4, 2)), {0: "odd"}),
        # A layer norm mixes the neurons' scales and signs.
        (_seq(_lin(3, 4), eqx.nn.LayerNorm(4), eqx.nn.Lambda(jnp.tanh), _lin(4, 2)), {0: "none"}),
        # Max pooling commutes with positive scales only, average pooling with both.
        (_seq(_conv(1, 3), eqx.nn.Lambda(jax.nn.relu), eqx.nn.MaxPool2d(2), _conv(3, 2, 1)),
         {0: "homogeneous"}),
        (_seq(_conv(1, 3), eqx.nn.Lambda(jnp.tanh), eqx.nn.MaxPool2d(2), _conv(3, 2, 1)),
         {0: "none"}),
        (_seq(_conv(1, 3), eqx.nn.Lambda(jnp.tanh), eqx.nn.AvgPool2d(2), _conv(3, 2, 1)),
         {0: "odd"}),
        # A residual stream is "none"; the block's own hidden neurons keep their symmetry.
        (_seq(_lin(3, 4), nfn.Residual(_seq(_lin(4, 5), eqx.nn.Lambda(jnp.tanh), _lin(5, 4, 1))),
              _lin(4, 2, 2)),
         {0: "none", 1: "odd"}),
        (_seq(eqx.nn.LSTMCell(3, 4, key=KEY)), {0: "none"}),
    ],
)  # fmt: skip
def test_sequential_records(model, expected):
    assert kinds(nfn.weight_space(model)) == expected


def test_zoo_cnn_space_records_the_given_activation():
    model = nfn.zoo.ZooCNN(key=KEY)
    assert set(kinds(nfn.zoo.cnn_space(model)).values()) == {"none"}
    assert set(kinds(nfn.zoo.cnn_space(model, activation="relu")).values()) == {"homogeneous"}
    assert set(kinds(nfn.zoo.cnn_space(model, activation="tanh")).values()) == {"odd"}


def test_records_survive_pickling():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, key=KEY))
    again = pickle.loads(pickle.dumps(space))
    assert again == space and again.symmetries == space.symmetries


# --------------------------------------------------------------------------- hand-written specs


def _hand_written():
    params = {"w1": np.ones((4, 3)), "b1": np.ones(4), "w2": np.ones((2, 4))}
    spec = {"w1": (0, None), "b1": (0,), "w2": (None, 0)}
    return params, spec


def test_hand_written_records_match_derived_ones():
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, use_final_bias=False, key=KEY)
    params = eqx.filter(mlp, eqx.is_array)
    spec = jax.tree.map(lambda _: None, params)
    spec = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight),
        spec,
        ((0, None), (0,), (None, 0)),
        is_leaf=lambda x: x is None,
    )
    record = nfn.NeuronSymmetry(
        0, "odd", [(".layers[0].weight", 0), (".layers[0].bias", 0)], [(".layers[1].weight", 1)]
    )
    space = nfn.WeightSpace.from_spec(params, spec, symmetries=(record,))
    assert space == nfn.weight_space(mlp)


def test_canonicalize_needs_records():
    params, spec = _hand_written()
    space = nfn.WeightSpace.from_spec(params, spec)
    for fn in (
        lambda: nfn.canonicalize(space, params),
        lambda: nfn.sample_symmetry(space, key=KEY),
    ):
        with raises_naming("permutation id 0", "no recorded activation symmetry"):
            fn()
    none = space.with_symmetries(nfn.NeuronSymmetry(0, "none"))
    out = nfn.canonicalize(none, params)
    assert all(np.array_equal(out[k], params[k]) for k in params)
    assert nfn.sample_symmetry(none, key=KEY) == {}


@pytest.mark.parametrize(
    "record, fragments",
    [
        (nfn.NeuronSymmetry(1, "odd", [("['w1']", 0)], [("['w2']", 1)]), ["id 1", "no such id"]),
        (nfn.NeuronSymmetry(0, "odd", [("['w1']", 1)], [("['w2']", 1)]), ["['w1']", "axis 1"]),
        (nfn.NeuronSymmetry(0, "odd", [("['w9']", 0)], [("['w2']", 1)]), ["['w9']"]),
        (nfn.NeuronSymmetry(0, "odd", [("['w1']", 0)], [("['w2']", 1)]),
         ["['b1']", "axis 0", "neither incoming nor outgoing"]),
        (nfn.NeuronSymmetry(0, "odd", [("['w1']", 0), ("['b1']", 0)], []),
         ["id 0", "incoming and outgoing"]),
        (nfn.NeuronSymmetry(0, "odd", [("['w1']", 0), ("['b1']", 0), ("['w1']", 0)],
                            [("['w2']", 1)]), ["['w1']", "twice"]),
    ],
)  # fmt: skip
def test_bad_records_are_rejected_naming_the_leaf_or_id(record, fragments):
    params, spec = _hand_written()
    space = nfn.WeightSpace.from_spec(params, spec)
    with raises_naming(*fragments):
        space.with_symmetries(record)


def test_bad_kind_and_a_tie_within_a_leaf_are_rejected():
    with raises_naming("id 0", "'even'"):
        nfn.NeuronSymmetry(0, "even")
    space = nfn.WeightSpace.from_spec({"h": np.ones((3, 3))}, {"h": (0, 0)})
    with raises_naming("['h']", "axes [0, 1]", "at most once"):
        space.with_symmetries(nfn.NeuronSymmetry(0, "odd", [("['h']", 0)], [("['h']", 1)]))
    assert space.with_symmetries(nfn.NeuronSymmetry(0, "none")).symmetry(0).kind == "none"


def test_apply_symmetry_checks_its_factors():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=KEY), io="permuted")
    params = eqx.filter(eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=KEY), eqx.is_array)
    with raises_naming("id 1", "'odd'", "±1"):
        nfn.apply_symmetry(space, params, {1: jnp.array([1.0, -1.0, 0.5, 1.0])})
    with raises_naming("id 1", "shape (3,)", "(4,)"):
        nfn.apply_symmetry(space, params, {1: jnp.ones(3)})
    with raises_naming("id 0", "'none'"):
        nfn.apply_symmetry(space, params, {0: jnp.ones(3)})
    with raises_naming("id 7", "not an id"):
        nfn.apply_symmetry(space, params, {7: jnp.ones(3)})
    relu = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 1, key=KEY))
    with raises_naming("id 0", "positive"):
        nfn.apply_symmetry(relu, params, {0: -jnp.ones(4)})
    with raises_naming("max_scale"):
        nfn.sample_symmetry(relu, key=KEY, max_scale=0.5)


# --------------------------------------------------------------------------- function preserved


@settings(max_examples=10, deadline=None)
@given(mlps(), st.integers(0, 2**30))
def test_symmetries_and_canonical_forms_preserve_mlp_functions(mlp, seed):
    space = nfn.weight_space(mlp)
    params = eqx.filter(mlp, eqx.is_array)
    factors = nfn.sample_symmetry(space, key=jax.random.key(seed))
    hidden = len(mlp.layers) - 1
    if mlp.activation in (jax.nn.relu, jax.nn.tanh):
        assert sorted(factors) == list(range(hidden))
    x = jax.random.normal(jax.random.key(seed + 1), (5, mlp.in_size))
    y = outputs(mlp, params, x)
    moved = nfn.apply_symmetry(space, params, factors)
    assert_close_scaled(y, outputs(mlp, moved, x), 1e-4)
    assert_close_scaled(y, outputs(mlp, nfn.canonicalize(space, params), x), 1e-4)
    # The action is not trivial wherever a factor is not 1 (a single neuron's random sign is +1
    # half the time, which leaves the network as it was).
    if any(bool(jnp.any(factor != 1)) for factor in factors.values()):
        assert max_difference(leaves(moved), leaves(params)) > 0


@settings(max_examples=8, deadline=None)
@given(conv_nets(), st.integers(0, 2**30))
def test_symmetries_and_canonical_forms_preserve_cnn_functions(net, seed):
    model, input_shape = net
    space = nfn.weight_space(model)
    params = eqx.filter(model, eqx.is_array)
    x = jax.random.normal(jax.random.key(seed + 1), (3, *input_shape))
    y = outputs(model, params, x)
    moved = nfn.apply_symmetry(space, params, nfn.sample_symmetry(space, key=jax.random.key(seed)))
    assert_close_scaled(y, outputs(model, moved, x), 1e-4)
    assert_close_scaled(y, outputs(model, nfn.canonicalize(space, params), x), 1e-4)


def test_a_wrong_kind_breaks_the_function():
    """The property tests can fail: a sign flip of ReLU neurons changes the function."""
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=KEY)
    space = nfn.weight_space(mlp)
    as_odd = space.with_symmetries(
        *(nfn.NeuronSymmetry(r.id, "odd", r.incoming, r.outgoing) for r in space.symmetries)
    )
    params = eqx.filter(mlp, eqx.is_array)
    x = jax.random.normal(KEY, (5, 3))
    flipped = nfn.apply_symmetry(as_odd, params, {0: -jnp.ones(8), 1: jnp.ones(8)})
    assert max_difference([outputs(mlp, params, x)], [outputs(mlp, flipped, x)]) > 1e-2


# --------------------------------------------------------------------------- canonical forms


def _float64_cases(draw_net):
    """`(model, space, params)` in float64 for a drawn MLP or conv net."""
    model = draw_net[0] if isinstance(draw_net, tuple) else draw_net
    model = as_float64(model)
    return model, nfn.weight_space(model), eqx.filter(model, eqx.is_array)


def _assert_trees_close(a, b, rel):
    for u, v in zip(leaves(a), leaves(b)):
        assert_close_scaled(u, v, rel)


@settings(max_examples=12, deadline=None)
@given(st.one_of(mlps(), conv_nets()), st.integers(0, 2**30))
def test_canonical_form_is_idempotent_and_invariant_float64(net, seed):
    with jax.enable_x64(True):
        model, space, params = _float64_cases(net)
        canonical = nfn.canonicalize(space, params)
        _assert_trees_close(nfn.canonicalize(space, canonical), canonical, 1e-12)
        factors = nfn.sample_symmetry(space, key=jax.random.key(seed), max_scale=3.0)
        moved = nfn.apply_symmetry(space, params, factors)
        _assert_trees_close(nfn.canonicalize(space, moved), canonical, 1e-10)
        # ... and commutes with permutations.
        perm = nfn.sample_permutation(space, key=jax.random.key(seed + 1))
        _assert_trees_close(
            nfn.canonicalize(space, nfn.permute(space, params, perm, channels=False)),
            nfn.permute(space, canonical, perm, channels=False),
            1e-12,
        )


def test_canonical_statistics_after_canonicalize():
    """Odd neurons end with a positive incoming sum, homogeneous ones with unit incoming norm."""
    for activation, kind in ((jnp.tanh, "odd"), (jax.nn.relu, "homogeneous")):
        mlp = eqx.nn.MLP(3, 2, 6, 2, activation=activation, key=KEY)
        space = nfn.weight_space(mlp)
        canonical = nfn.canonicalize(space, eqx.filter(mlp, eqx.is_array))
        for layer in canonical.layers[:-1]:
            rows = jnp.concatenate([layer.weight, layer.bias[:, None]], axis=1)
            if kind == "odd":
                assert bool(jnp.all(rows.sum(1) > 0))
            else:
                np.testing.assert_allclose(jnp.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)


def test_sign_flips_leave_the_canonical_form_exactly_unchanged_in_float32():
    mlp = eqx.nn.MLP(5, 3, 16, 3, activation=jnp.tanh, key=KEY)
    space = nfn.weight_space(mlp)
    params = eqx.filter(mlp, eqx.is_array)
    canonical = jax.jit(nfn.canonicalize, static_argnums=0)(space, params)
    for seed in range(3):
        flips = nfn.sample_symmetry(space, key=jax.random.key(seed))
        moved = nfn.apply_symmetry(space, params, flips)
        again = jax.jit(nfn.canonicalize, static_argnums=0)(space, moved)
        assert all(np.array_equal(u, v) for u, v in zip(leaves(again), leaves(canonical)))


def test_ties_zero_sum_uses_cubes_and_zero_incoming_is_left_alone():
    mlp = eqx.nn.MLP(2, 1, 3, 1, activation=jnp.tanh, key=KEY)
    weight = jnp.array([[1.0, -2.0], [0.0, 0.0], [-1.0, 1.0]])
    bias = jnp.array([1.0, 0.0, 0.0])  # sums: 0 (cubes -6), 0 (all zero), 0 (cubes 0)
    out = jnp.array([[1.0, 2.0, 3.0]])
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight),
                      mlp, (weight, bias, out))  # fmt: skip
    space = nfn.weight_space(mlp)
    canonical = nfn.canonicalize(space, eqx.filter(mlp, eqx.is_array))
    np.testing.assert_array_equal(canonical.layers[0].weight, [[-1.0, 2.0], [0, 0], [-1.0, 1.0]])
    np.testing.assert_array_equal(canonical.layers[0].bias, [-1.0, 0.0, 0.0])
    np.testing.assert_array_equal(canonical.layers[1].weight, [[-1.0, 2.0, 3.0]])


def test_zero_norm_relu_neurons_are_left_alone_with_finite_gradients():
    mlp = eqx.nn.MLP(2, 1, 2, 1, key=KEY)
    arrays = (jnp.array([[0.0, 0.0], [3.0, 4.0]]), jnp.zeros(2), jnp.array([[5.0, 1.0]]))
    mlp = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight), mlp, arrays
    )
    space = nfn.weight_space(mlp)
    params = eqx.filter(mlp, eqx.is_array)
    canonical = nfn.canonicalize(space, params)
    np.testing.assert_allclose(canonical.layers[0].weight, [[0, 0], [0.6, 0.8]])
    np.testing.assert_allclose(canonical.layers[1].weight, [[5.0, 5.0]])
    grads = jax.grad(lambda p: jnp.sum(leaves(nfn.canonicalize(space, p))[0] ** 2 + 1))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves(grads))


def test_canonicalize_jits_vmaps_and_differentiates():
    mlp = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=KEY)
    space = nfn.weight_space(mlp)
    batch = jax.vmap(lambda k: eqx.filter(eqx.nn.MLP(3, 2, 8, 2, key=k), eqx.is_array))(
        jax.random.split(KEY, 4)
    )
    out = jax.jit(jax.vmap(lambda p: nfn.canonicalize(space, p)))(batch)
    one = nfn.canonicalize(space, jax.tree.map(lambda x: x[2], batch))
    _assert_trees_close(jax.tree.map(lambda x: x[2], out), one, 1e-6)
    grad = jax.grad(lambda p: jnp.sum(leaves(nfn.canonicalize(space, p))[2]))(
        jax.tree.map(lambda x: x[0], batch)
    )
    assert max_difference(leaves(grad), [jnp.zeros_like(g) for g in leaves(grad)]) > 0
