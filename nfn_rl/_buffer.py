"""A FIFO replay buffer of (policy parameters, return) pairs that lives in device memory."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree


class ReplayBuffer(eqx.Module):
    """Fixed-capacity FIFO storage; every array leaf of `params` has a leading `capacity` axis.

    Slots `[0, size)` are filled; `position` is where the next entry goes. Once full, inserts
    overwrite the oldest entries. All methods are pure and jit-friendly.
    """

    params: PyTree[Array]
    returns: Float[Array, " capacity"]
    position: Int[Array, ""]
    size: Int[Array, ""]

    @property
    def capacity(self) -> int:
        return self.returns.shape[0]

    def insert(
        self,
        params: PyTree[Array],
        returns: Float[Array, " batch"],
        mask: Bool[Array, " batch"] | None = None,
    ) -> "ReplayBuffer":
        """Append a batch (leading `batch` axis on every leaf of `params`) in order.

        Entries with `mask` False are skipped. If the batch holds more entries than the capacity,
        only its last `capacity` kept entries survive, as if inserted one by one.
        """
        if mask is None:
            mask = jnp.ones(returns.shape, bool)
        rank = jnp.cumsum(mask) - 1
        count = jnp.sum(mask, dtype=rank.dtype)
        # Entries overwritten within this same batch are dropped so that scatter indices are
        # unique (the winner among duplicate scatter indices is unspecified).
        keep = mask & (rank >= count - self.capacity)
        slot = jnp.where(keep, (self.position + rank) % self.capacity, self.capacity)

        def put(store, new):
            return store.at[slot].set(new, mode="drop")

        return ReplayBuffer(
            params=jax.tree.map(put, self.params, params),
            returns=put(self.returns, returns),
            position=((self.position + count) % self.capacity).astype(self.position.dtype),
            size=jnp.minimum(self.size + count, self.capacity).astype(self.size.dtype),
        )

    def sample(
        self, num: int, *, key: PRNGKeyArray
    ) -> tuple[PyTree[Array], Float[Array, " num"], Bool[Array, " num"]]:
        """`num` entries drawn uniformly without replacement from the filled slots.

        Returns `(params, returns, valid)`; while fewer than `num` slots are filled, every filled
        slot is returned once and the remaining rows (`valid` False) repeat slot 0 and must be
        ignored.
        """
        # A uniformly random order of the filled slots; unfilled slots sort last.
        scores = jax.random.uniform(key, (self.capacity,))
        scores = jnp.where(jnp.arange(self.capacity) < self.size, scores, 2.0)
        _, index = jax.lax.top_k(-scores, min(num, self.capacity))
        index = jnp.pad(index, (0, num - index.shape[0]))
        valid = jnp.arange(num) < self.size
        index = jnp.where(valid, index, 0)
        return jax.tree.map(lambda x: x[index], self.params), self.returns[index], valid


def make_buffer(example_params: PyTree[ArrayLike], capacity: int) -> ReplayBuffer:
    """An empty buffer for entries shaped like `example_params` (one entry, no leading axis)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return ReplayBuffer(
        params=jax.tree.map(
            lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)), example_params
        ),
        returns=jnp.zeros((capacity,)),
        position=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )
