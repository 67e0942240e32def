"""The Ant whose whole episodes run on MuJoCo's C engine, inside jitted code."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from nfn_rl.envs._ant import Ant
from nfn_rl.envs._native import NativeAntRollout


class NativeAnt(Ant):
    """An `Ant` whose episodes (`nfn_rl.episode_length_and_return`) are played by a
    `NativeAntRollout` on the host, through `jax.pure_callback`; everything else (`reset`,
    `step`, what PPO and SAC use) is the MJX `Ant`'s.

    Jitted code that rolls out a batch of policies (a `vmap` over their parameters) makes one
    host call for the whole batch, which the C engine steps with its thread pool. On a CPU that
    is several times faster than MJX and compiles no physics (`benchmarks/rollout_backends.py`);
    returns agree with MJX in distribution, not step for step (see `NativeAntRollout`). A
    program with a host callback is not kept in JAX's persistent compilation cache.
    """

    rollout: NativeAntRollout = eqx.field(static=True)

    def __init__(
        self, variant: str = "position", horizon: int = 1000, num_threads: int | None = None
    ):
        super().__init__(variant, horizon)
        self.rollout = NativeAntRollout(self, num_threads)

    def episode(self, policy: eqx.nn.MLP) -> tuple[Int[Array, ""], Float[Array, ""]]:
        """The episode length and return of `policy` from the home reset (batched under
        `vmap` into one host call)."""
        params, static = eqx.partition(policy, eqx.is_array)
        ndims = [leaf.ndim for leaf in jax.tree.leaves(params)]

        def host(params):
            leaves = jax.tree.leaves(params)
            batch_shape = leaves[0].shape[: leaves[0].ndim - ndims[0]]
            flat = jax.tree.map(
                lambda x, ndim: np.asarray(x).reshape(-1, *x.shape[x.ndim - ndim :]),
                params,
                jax.tree.unflatten(jax.tree.structure(params), ndims),
            )
            lengths, returns = self.rollout.episode_lengths_and_returns(flat, static)
            return (
                lengths.astype(np.int32).reshape(batch_shape),
                returns.astype(np.float32).reshape(batch_shape),
            )

        shapes = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32))
        return jax.pure_callback(host, shapes, params, vmap_method="expand_dims")
