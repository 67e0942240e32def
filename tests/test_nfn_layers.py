"""Layer structure: the derived plan is static data of the layer, and the ready-made models'
options (normalisation, dropout, heads, moving to other hidden widths)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nfn

KEY = jax.random.key(0)


def mlp_space(width=5, depth=2, io="permuted"):
    return nfn.weight_space(eqx.nn.MLP(3, 2, width, depth, key=KEY), io=io)


def test_equivariant_plan_is_static_data_of_the_layer():
    space = mlp_space()
    a = nfn.EquivariantLinear(space, 2, 3, key=jax.random.key(1))
    b = nfn.EquivariantLinear(space, 2, 3, key=jax.random.key(2))
    assert a.plan == b.plan and hash(a.plan) == hash(b.plan)
    assert len(a.plan.output_buckets) == len(a.coupled_weights)
    assert sorted(k for bucket in a.plan.output_buckets for k in bucket) == list(
        range(len(a.terms))
    )
    # Equal plans are equal static metadata: a jitted call compiles once for both layers.
    traces = []

    @eqx.filter_jit
    def apply(layer, x):
        traces.append(None)
        return layer(x)

    x = nfn.to_features(
        jax.tree.map(jnp.ones_like, eqx.filter(eqx.nn.MLP(3, 2, 5, 2, key=KEY), eqx.is_array))
    )
    x = jax.tree.map(lambda v: jnp.concatenate([v, v], -1), x)
    np.testing.assert_array_equal(jax.tree.leaves(apply(a, x))[0], jax.tree.leaves(a(x))[0])
    apply(b, x)
    assert len(traces) == 1
