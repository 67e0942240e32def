"""A FIFO buffer of pytrees that lives in device memory: EPVF's (policy, return) pairs and SAC's
transitions."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int, PRNGKeyArray, PyTree


class FIFOBuffer(eqx.Module):
    """Fixed-capacity FIFO storage; every array leaf of `items` has a leading `capacity` axis.

    Slots `[0, size)` are filled; `position` is where the next entry goes. Once full, inserts
    overwrite the oldest entries. All methods are pure and jit-friendly.
    """

    items: PyTree[Array]
    position: Int[Array, ""]
    size: Int[Array, ""]

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.items)[0].shape[0]

    def insert(
        self, batch: PyTree[Array], mask: Bool[Array, " batch"] | None = None
    ) -> "FIFOBuffer":
        """Append a batch (leading `batch` axis on every leaf, structured like `items`) in order.

        Entries with `mask` False are skipped. If the batch holds more entries than the capacity,
        only its last `capacity` kept entries survive, as if inserted one by one.
        """
        if mask is None:
            mask = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], bool)
        rank = jnp.cumsum(mask) - 1
        count = jnp.sum(mask, dtype=rank.dtype)
        # Entries overwritten within this same batch are dropped so that scatter indices are
        # unique (the winner among duplicate scatter indices is unspecified).
        keep = mask & (rank >= count - self.capacity)
        slot = jnp.where(keep, (self.position + rank) % self.capacity, self.capacity)
        return FIFOBuffer(
            items=jax.tree.map(lambda s, n: s.at[slot].set(n, mode="drop"), self.items, batch),
            position=((self.position + count) % self.capacity).astype(self.position.dtype),
            size=jnp.minimum(self.size + count, self.capacity).astype(self.size.dtype),
        )

    def sample(self, num: int, *, key: PRNGKeyArray) -> tuple[PyTree[Array], Bool[Array, " num"]]:
        """`num` entries drawn uniformly without replacement from the filled slots.

        Returns `(items, valid)`; while fewer than `num` slots are filled, every filled slot is
        returned once and the remaining rows (`valid` False) repeat slot 0 and must be ignored.
        """
        # A uniformly random order of the filled slots; unfilled slots sort last.
        scores = jax.random.uniform(key, (self.capacity,))
        scores = jnp.where(jnp.arange(self.capacity) < self.size, scores, 2.0)
        _, index = jax.lax.top_k(-scores, min(num, self.capacity))
        index = jnp.pad(index, (0, num - index.shape[0]))
        valid = jnp.arange(num) < self.size
        index = jnp.where(valid, index, 0)
        return jax.tree.map(lambda x: x[index], self.items), valid

    def sample_with_replacement(self, num: int, *, key: PRNGKeyArray) -> PyTree[Array]:
        """`num` entries drawn uniformly with replacement from the filled slots (slot 0 while
        the buffer is empty)."""
        index = jax.random.randint(key, (num,), 0, jnp.maximum(self.size, 1))
        return jax.tree.map(lambda x: x[index], self.items)


def make_buffer(example: PyTree[ArrayLike], capacity: int) -> FIFOBuffer:
    """An empty buffer for entries shaped like `example` (one entry, no leading axis)."""
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    return FIFOBuffer(
        items=jax.tree.map(
            lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)), example
        ),
        position=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )
