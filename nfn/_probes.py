"""Probe features: what an MLP computes on a few inputs, laid out on its weight space."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


def _check_mlp(model, name: str) -> None:
    if not isinstance(model, eqx.nn.MLP) or getattr(model, "scan", False):
        raise TypeError(
            f"{name} must be an eqx.nn.MLP (scan=False) or its array part "
            f"(eqx.filter(mlp, eqx.is_array)), got {type(model).__name__}"
        )


class ProbeFeatures(eqx.Module):
    """Features of an MLP's parameters from running the MLP on `K` probe inputs.

    For every layer `W, b` (`W` of shape `(out, in)`) and probe `x_k`, the features are the
    message along each edge, `W[i, j] * a[j](x_k)` on the weight leaf (`a` is the previous
    layer's output, the probe itself for the first layer), and the output of each neuron,
    `a[i](x_k)` (after the activation; the network's output for the last layer), on the bias
    leaf; any other array leaf (a learnt activation's) gets zeros. The result has the
    structure of the parameters with a trailing axis of `K` channels on every leaf: it can be
    concatenated with [`nfn.to_features`][] of the parameters and read by any equivariant
    layer of the MLP's weight space.

    Permuting the hidden neurons of the parameters permutes these features in the same way
    (the messages and outputs move with their neurons): they are equivariant features under
    every permutation of [`nfn.weight_space`][]`(mlp)`, and they are the network's
    computation itself, which weights from independent initialisations hide behind their
    random first layer. Sign flips of odd activations do not act on them as on the weights:
    the messages out of a flipped neuron keep their sign.

    `probes` are an array leaf: learned by a model that holds this module unless
    `learned=False` (the default), in which case the gradient stops at them.
    """

    probes: Float[Array, "probes in_size"]
    static: eqx.nn.MLP = eqx.field(static=True)
    learned: bool = eqx.field(static=True)

    def __init__(
        self,
        mlp: eqx.Module,
        probes: Float[Array, "probes in_size"],
        *,
        learned: bool = False,
    ):
        """**Arguments:**

        - `mlp`: an MLP of the networks to read: its structure and activations are used, not
          its arrays.
        - `probes`: the `K` inputs, shape `(K, in_size)` (`in_size` the MLP's input size).
        - `learned`: whether a model that trains this module moves the probes.
        """
        _check_mlp(mlp, "mlp")
        probes = jnp.asarray(probes)
        in_size = mlp.layers[0].weight.shape[1]
        if probes.ndim != 2 or probes.shape[1] != in_size:
            raise ValueError(
                f"probes must have shape (K, {in_size}) for an MLP of input size {in_size}, "
                f"got {probes.shape}"
            )
        self.probes = probes
        self.static = eqx.filter(mlp, eqx.is_array, inverse=True)
        self.learned = learned

    @property
    def channels(self) -> int:
        """`K`, the number of probes: the channels every leaf of the features has."""
        return self.probes.shape[0]

    def __call__(self, params: PyTree) -> PyTree[Array]:
        """The probe features of **one** MLP's parameters (the MLP, or its array part, of the
        structure this module was made for); `vmap` for a batch."""
        arrays = eqx.filter(params, eqx.is_array)
        mlp = eqx.combine(arrays, self.static)
        _check_mlp(mlp, "params")
        probes = self.probes if self.learned else jax.lax.stop_gradient(self.probes)
        inputs = probes.T
        features = []
        last = len(mlp.layers) - 1
        for index, layer in enumerate(mlp.layers):
            messages = layer.weight[:, :, None] * inputs[None]
            inputs = jnp.sum(messages, axis=1)
            if layer.bias is not None:
                inputs = inputs + layer.bias[:, None]
            if index < last:
                activation = jax.tree.map(
                    lambda x, i=index: x[i] if eqx.is_array(x) else x, mlp.activation
                )
                inputs = _per_neuron(activation, inputs)
            # eqx.nn.MLP applies no final activation at depth 0.
            elif mlp.depth > 0:
                if mlp.out_size == "scalar":
                    inputs = jax.vmap(mlp.final_activation)(inputs[0])[None]
                else:
                    inputs = _per_neuron(mlp.final_activation, inputs)
            features.append(messages)
            if layer.bias is not None:
                features.append(inputs)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape + (self.channels,), x.dtype), arrays)
        return eqx.tree_at(_layer_arrays, zeros, features)


def _layer_arrays(tree) -> list:
    """The weights and biases of an MLP's layers, in order."""
    return [x for layer in tree.layers for x in (layer.weight, layer.bias) if x is not None]


def _per_neuron(activation, values: Float[Array, "neurons probes"]) -> Array:
    """`activation` applied as eqx.nn.MLP applies it: to each neuron's scalar value on its own
    (one copy of the activation per neuron, along the first axis of its arrays), per probe."""
    one_probe = eqx.filter_vmap(lambda f, value: f(value))
    return jax.vmap(lambda column: one_probe(activation, column), in_axes=1, out_axes=1)(values)
