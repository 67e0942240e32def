"""Weight-space specs: validation errors, tables, sizes, deep specs and derivation from models."""

import pickle
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from nfn_strategies import weight_spaces

import nfn


def arr(*shape):
    return np.zeros(shape, np.float32)


def raises_naming(*fragments):
    """pytest.raises(ValueError) whose message must contain every fragment (literally)."""
    return pytest.raises(
        ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    )


# --------------------------------------------------------------------------- bad specs


def test_rank_mismatch_names_leaf():
    params = {"a": arr(2, 3), "b": arr(3)}
    with raises_naming("['b']", "2 axes", "rank 1"):
        nfn.WeightSpace.from_spec(params, {"a": (0, 1), "b": (1, None)})


def test_one_id_different_sizes_names_both_leaves_and_axes():
    params = {"a": arr(2, 3), "b": arr(4, 3)}
    with raises_naming("['b']", "axis 0", "size 4", "['a']", "size 2", "id 0"):
        nfn.WeightSpace.from_spec(params, {"a": (0, 1), "b": (0, 1)})


def test_tie_with_different_sizes_names_axis():
    with raises_naming("['h']", "axis 1", "size 3"):
        nfn.WeightSpace.from_spec({"h": arr(2, 3)}, {"h": (0, 0)})


def test_structure_mismatch_names_missing_and_extra_leaves():
    params = {"a": arr(2), "b": arr(2)}
    with raises_naming("['b']"):
        nfn.WeightSpace.from_spec(params, {"a": (0,)})
    with raises_naming("['c']", "without a params leaf"):
        nfn.WeightSpace.from_spec(params, {"a": (0,), "b": (0,), "c": (0,)})
    with raises_naming("['b']", "['c']"):
        nfn.WeightSpace.from_spec(params, {"a": (0,), "c": (0,)})


def test_structure_mismatch_of_containers():
    with pytest.raises(ValueError, match="structure"):
        nfn.WeightSpace.from_spec([arr(2), arr(2)], ((0,), (0,)))


def test_non_array_leaf_names_leaf():
    with raises_naming("['b']", "float", "not an array"):
        nfn.WeightSpace.from_spec({"a": arr(2), "b": 1.5}, {"a": (0,), "b": ()})


def test_spec_entry_not_a_tuple_names_leaf():
    with raises_naming("['a']", "not a tuple"):
        nfn.WeightSpace.from_spec({"a": arr(2)}, {"a": [0]})


@pytest.mark.parametrize("bad", [1.0, "0", True, False])
def test_non_int_id_names_leaf_axis_and_type(bad):
    params = {"a": arr(2, 3), "b": arr(3, 3)}
    with raises_naming("['b']", "axis 1", type(bad).__name__):
        nfn.WeightSpace.from_spec(params, {"a": (0, None), "b": (None, bad)})


def test_numpy_int_ids_are_accepted_and_normalised():
    space = nfn.WeightSpace.from_spec({"a": arr(2, 3)}, {"a": (np.int64(4), None)})
    assert space.leaves[0].axes == (4, None)
    assert type(space.leaves[0].axes[0]) is int


def test_scalar_and_none_subtrees():
    params = {"s": arr(), "skip": None, "w": arr(2, 1)}
    space = nfn.WeightSpace.from_spec(params, {"s": (), "skip": None, "w": (0, 1)})
    assert [leaf.path for leaf in space] == ["['s']", "['w']"]
    assert space.sizes == {0: 2, 1: 1}
    assert space.num_parameters == 3


# --------------------------------------------------------------------------- table, sizes


@settings(max_examples=40)
@given(weight_spaces())
def test_table_and_repr_list_every_leaf_and_sizes(drawn):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    table, text = space.table(), repr(space)
    assert len(space) == len(params)
    for leaf in space:
        name = leaf.path[2:-2]
        assert np.shape(params[name]) == leaf.shape
        assert tuple(spec[name]) == leaf.axes
        row = [line for line in table.splitlines() if line.startswith(leaf.path)]
        assert len(row) == 1 and str(leaf.shape) in row[0] and str(leaf.axes) in row[0]
        assert leaf.path in text
    # sizes: every id with the size of every axis it acts on, computed independently.
    expected = {}
    for name, axes in spec.items():
        for size, pid in zip(np.shape(params[name]), axes):
            if pid is not None:
                assert expected.setdefault(pid, size) == size
    assert space.sizes == expected
    assert set(space.ids) == set(expected)
    assert space.num_parameters == sum(np.size(x) for x in params.values())


# --------------------------------------------------------------------------- deep MLPs


def expected_mlp_spec(num_linear, use_bias, io):
    """Hand-written spec of an eqx.nn.MLP with `num_linear` Linear layers."""
    hidden = list(range(num_linear - 1))  # id of the neurons after layer k (k < num_linear - 1)
    if io == "fixed":
        inp, out = None, None
    else:
        # derivation numbers ids in order of appearance: input first, then hidden, then output.
        inp, hidden, out = 0, [k + 1 for k in hidden], num_linear
    specs = []
    for k in range(num_linear):
        rows = hidden[k] if k < num_linear - 1 else out
        cols = inp if k == 0 else hidden[k - 1]
        layer = {"weight": (rows, cols)}
        if use_bias:
            layer["bias"] = (rows,)
        specs.append(layer)
    return specs


def spec_of(space):
    return {leaf.path: leaf.axes for leaf in space}


@pytest.mark.parametrize("io", ["fixed", "permuted"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_deep_mlp_spec(io, use_bias):
    depth = 11  # 12 Linear layers: keys layers[10], layers[11] sort before layers[2] as strings
    mlp = eqx.nn.MLP(
        3, 2, 4, depth, use_bias=use_bias, use_final_bias=use_bias, key=jax.random.key(0)
    )
    space = nfn.weight_space(mlp, io=io)
    expected = {}
    for k, layer in enumerate(expected_mlp_spec(depth + 1, use_bias, io)):
        for name, axes in layer.items():
            expected[f".layers[{k}].{name}"] = axes
    assert spec_of(space) == expected


def test_deep_spec_values_are_not_scrambled():
    """Leaf order, table rows and permute must follow the tree, not string order of keys."""
    depth = 11
    mlp = eqx.nn.MLP(2, 2, 3, depth, key=jax.random.key(1))
    params = eqx.filter(mlp, eqx.is_array)
    # Mark every array with its layer number, then check values land back where they belong.
    marked = eqx.tree_at(
        lambda p: [layer.weight for layer in p.layers],
        params,
        [jnp.full(layer.weight.shape, k, jnp.float32) for k, layer in enumerate(params.layers)],
    )
    space = nfn.weight_space(mlp)
    paths = [leaf.path for leaf in space]
    assert paths.index(".layers[2].weight") < paths.index(".layers[10].weight")
    table_rows = space.table().splitlines()[1 : 1 + len(space)]
    assert [row.split()[0] for row in table_rows] == paths
    perm = nfn.sample_permutation(space, key=jax.random.key(2))
    permuted = nfn.permute(space, marked, perm)
    for k, layer in enumerate(permuted.layers):
        np.testing.assert_array_equal(np.asarray(layer.weight), k)
    # Unflatten(flatten) is the identity and keeps every leaf in its place.
    leaves = space.flatten(marked, channels=False)
    for leaf, x in zip(space, leaves):
        k = int(re.search(r"layers\[(\d+)\]", leaf.path).group(1))
        if leaf.path.endswith("weight"):
            np.testing.assert_array_equal(np.asarray(x), k)
    rebuilt = space.unflatten(leaves)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(rebuilt), jax.tree_util.tree_leaves(marked))
    )


# --------------------------------------------------------------------------- derivation


KEY = jax.random.key(0)


def conv_cases():
    c1 = eqx.nn.Conv1d(2, 3, 3, key=KEY)
    c1n = eqx.nn.Conv1d(2, 3, 3, use_bias=False, key=KEY)
    c2 = eqx.nn.Conv2d(2, 3, 3, key=KEY)
    c3 = eqx.nn.Conv3d(2, 3, 2, key=KEY)
    c3n = eqx.nn.Conv3d(2, 3, 2, use_bias=False, key=KEY)
    return [
        (
            c1,
            {".weight": (None, None, None), ".bias": (None, None)},
            {".weight": (1, 0, None), ".bias": (1, None)},
        ),
        (c1n, {".weight": (None, None, None)}, {".weight": (1, 0, None)}),
        (
            c2,
            {".weight": (None,) * 4, ".bias": (None,) * 3},
            {".weight": (1, 0, None, None), ".bias": (1, None, None)},
        ),
        (
            c3,
            {".weight": (None,) * 5, ".bias": (None,) * 4},
            {".weight": (1, 0, None, None, None), ".bias": (1, None, None, None)},
        ),
        (c3n, {".weight": (None,) * 5}, {".weight": (1, 0, None, None, None)}),
    ]


def test_weight_space_single_layers():
    lin = eqx.nn.Linear(3, 4, key=KEY)
    lin_nb = eqx.nn.Linear(3, 4, use_bias=False, key=KEY)
    cases = [
        (lin, {".weight": (None, None), ".bias": (None,)}, {".weight": (1, 0), ".bias": (1,)}),
        (lin_nb, {".weight": (None, None)}, {".weight": (1, 0)}),
        *conv_cases(),
    ]
    for model, fixed, permuted in cases:
        assert spec_of(nfn.weight_space(model)) == fixed, model
        assert spec_of(nfn.weight_space(model, io="permuted")) == permuted, model
        space = nfn.weight_space(model)
        for leaf in space:
            assert leaf.shape == eval("model" + leaf.path).shape


@pytest.mark.parametrize("use_bias", [True, False])
def test_weight_space_mlp(use_bias):
    mlp = eqx.nn.MLP(3, 2, 4, 2, use_bias=use_bias, use_final_bias=use_bias, key=KEY)
    b = use_bias
    fixed = {
        ".layers[0].weight": (0, None),
        ".layers[1].weight": (1, 0),
        ".layers[2].weight": (None, 1),
    }
    if b:
        fixed.update({".layers[0].bias": (0,), ".layers[1].bias": (1,), ".layers[2].bias": (None,)})
    permuted = {
        ".layers[0].weight": (1, 0),
        ".layers[1].weight": (2, 1),
        ".layers[2].weight": (3, 2),
    }
    if b:
        permuted.update({".layers[0].bias": (1,), ".layers[1].bias": (2,), ".layers[2].bias": (3,)})
    assert spec_of(nfn.weight_space(mlp)) == fixed
    assert spec_of(nfn.weight_space(mlp, io="permuted")) == permuted


def test_weight_space_mlp_depth_zero():
    mlp = eqx.nn.MLP(3, 2, 4, 0, key=KEY)
    assert spec_of(nfn.weight_space(mlp)) == {
        ".layers[0].weight": (None, None),
        ".layers[0].bias": (None,),
    }


def test_weight_space_sequential_conv_with_lambdas():
    k1, k2, k3 = jax.random.split(KEY, 3)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 4, 3, key=k1),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(4, 5, 3, use_bias=False, key=k2),
            eqx.nn.Lambda(jax.nn.tanh),
            eqx.nn.Identity(),
            eqx.nn.Lambda(lambda x: x.reshape(-1)),  # unknown: a barrier
            eqx.nn.Linear(5 * 2 * 2, 3, key=k3),
        ]
    )
    space = nfn.weight_space(model)
    assert spec_of(space) == {
        ".layers[0].weight": (0, None, None, None),
        ".layers[0].bias": (0, None, None),
        ".layers[2].weight": (None, 0, None, None),
        ".layers[6].weight": (None, None),
        ".layers[6].bias": (None,),
    }
    permuted = nfn.weight_space(model, io="permuted")
    assert spec_of(permuted) == {
        ".layers[0].weight": (1, 0, None, None),
        ".layers[0].bias": (1, None, None),
        ".layers[2].weight": (None, 1, None, None),
        ".layers[6].weight": (2, None),
        ".layers[6].bias": (2,),
    }


def test_weight_space_sequential_of_linears_matches_mlp():
    k = jax.random.split(KEY, 3)
    seq = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(4, 4, key=k[1]),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Linear(4, 2, key=k[2]),
        ]
    )
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=KEY)
    seq_axes = [leaf.axes for leaf in nfn.weight_space(seq)]
    mlp_axes = [leaf.axes for leaf in nfn.weight_space(mlp)]
    assert seq_axes == mlp_axes


def test_unsupported_module_mentions_from_spec():
    # Group norm mixes channels within groups: not one free permutation of the channels.
    with raises_naming("GroupNorm", "WeightSpace.from_spec", "hooks="):
        nfn.weight_space(eqx.nn.GroupNorm(2, 4))
    seq = eqx.nn.Sequential([eqx.nn.Linear(2, 4, key=KEY), eqx.nn.GroupNorm(2, 4)])
    with raises_naming("GroupNorm", "layers[1]", "WeightSpace.from_spec"):
        nfn.weight_space(seq)


@pytest.mark.parametrize("io", ["Fixed", "np", None, 0])
def test_bad_io_value(io):
    with pytest.raises((ValueError, TypeError), match="io|fixed"):
        nfn.weight_space(eqx.nn.Linear(2, 3, key=KEY), io=io)


def test_grouped_conv_is_rejected():
    """Channels of a grouped conv are not freely permutable (see test_nfn_action)."""
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv1d(2, 4, 1, groups=2, key=KEY),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv1d(4, 2, 1, key=KEY),
        ]
    )
    for io in ("fixed", "permuted"):
        with raises_naming("groups=2", "layers[0]", "WeightSpace.from_spec"):
            nfn.weight_space(model, io=io)


# --------------------------------------------------------------------------- structure, pickling


def test_structure_mismatch_of_modules_names_the_field_not_whole_treedefs():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 16, 1, key=KEY))
    wider = eqx.filter(eqx.nn.MLP(3, 2, 32, 1, key=KEY), eqx.is_array)
    with pytest.raises(ValueError, match="width_size expected 16, got 32") as info:
        nfn.permute(space, wider, nfn.identity_permutation(space), channels=False)
    assert "PyTreeDef" not in str(info.value) and "\n" not in str(info.value)
    seq = eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=KEY), eqx.nn.Linear(3, 2, key=KEY)])
    other = eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=KEY), eqx.nn.Linear(3, 4, key=KEY)])
    with raises_naming("at .layers[1]", "out_features expected 2, got 4"):
        nfn.weight_space(seq).flatten(eqx.filter(other, eqx.is_array), channels=False)


def test_structure_mismatch_of_containers_names_the_path():
    space = nfn.WeightSpace.from_spec({"a": arr(2), "b": (arr(2),)}, {"a": (0,), "b": ((0,),)})
    cases = [
        ({"a": arr(2), "c": (arr(2),)}, "missing keys ['b'], unexpected keys ['c']"),
        ({"a": arr(2), "b": [arr(2)]}, "at ['b']: expected a tuple, got a list"),
        ({"a": arr(2), "b": (arr(2), arr(2))}, "at ['b']: tuple with 2 entries, expected 1"),
    ]
    for tree, fragment in cases:
        with raises_naming(fragment):
            space.flatten(tree, channels=False)


@settings(max_examples=10)
@given(weight_spaces())
def test_weight_space_equals_itself_after_pickling(drawn):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    again = pickle.loads(pickle.dumps(space))
    assert again == space and hash(again) == hash(space)


def test_derived_weight_space_survives_pickling():
    model = eqx.nn.MLP(3, 2, 4, 2, key=KEY)
    space = nfn.weight_space(model)
    again = pickle.loads(pickle.dumps(space))
    assert again == space and hash(again) == hash(space)
    assert again.table() == space.table()
    # It still describes freshly filtered parameters of the model.
    again.flatten(eqx.filter(model, eqx.is_array), channels=False)


# --------------------------------------------------------------------------- packed axes


def test_packed_axes_unpack_for_layers_and_pack_back():
    params = {"w": arr(12, 2), "b": arr(12)}
    spec = {"w": (nfn.Packed((None, 4), (0, 3)), None), "b": (nfn.Packed((None, 4), (0, 3)),)}
    space = nfn.WeightSpace.from_spec(params, spec)
    assert [leaf.shape for leaf in space] == [(4, 3), (4, 3, 2)]  # leaves in key order: b, w
    assert [leaf.stored_shape for leaf in space] == [(12,), (12, 2)]
    assert space.sizes == {0: 3}
    assert "(12, 2) as (4, 3, 2)" in space.table()
    assert pickle.loads(pickle.dumps(space)) == space
    values = {"w": jnp.arange(24.0).reshape(12, 2), "b": jnp.arange(12.0)}
    perm = {0: jnp.asarray([2, 0, 1])}
    out = nfn.permute(space, values, perm)
    # Block g, entry i of the packed axis is row 3 g + i; each block is permuted on its own.
    rows = np.concatenate([3 * g + np.asarray([2, 0, 1]) for g in range(4)])
    np.testing.assert_array_equal(out["w"], np.asarray(values["w"])[rows])
    np.testing.assert_array_equal(out["b"], np.asarray(values["b"])[rows])


def test_packed_axis_of_the_wrong_size_names_leaf_and_axis():
    with raises_naming("['w']", "axis 0 has size 12", "packs 9"):
        nfn.WeightSpace.from_spec({"w": arr(12, 2)}, {"w": (nfn.Packed((None, 3), (0, 3)), None)})
    with pytest.raises(ValueError, match="positive"):
        nfn.Packed((None, 0))
