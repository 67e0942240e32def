"""Set partitions of tensor axes, restricted to blocks whose axes share one permutation id.

These index the bases of equivariant maps: an equivariant linear map between two leaves is a
combination of one basis map per partition of (output axes + input axes) whose blocks each hold
axes of a single id.
"""

import itertools
from collections.abc import Sequence

Block = tuple[int, ...]
Partition = tuple[Block, ...]


def set_partitions(items: Sequence[int]) -> list[Partition]:
    """All set partitions of `items`; blocks keep the order of `items`."""
    if not items:
        return [()]
    first, rest = items[0], items[1:]
    out = []
    for partition in set_partitions(rest):
        out.append(((first,), *partition))
        for k in range(len(partition)):
            merged = (first, *partition[k])
            out.append((*partition[:k], merged, *partition[k + 1 :]))
    return out


def id_partitions(ids: tuple[int, ...]) -> tuple[Partition, ...]:
    """Partitions of positions `0..len(ids)-1` whose blocks hold positions of one id only.

    Blocks are sorted by their first position, so each partition has one canonical form.
    """
    groups: dict[int, list[int]] = {}
    for position, pid in enumerate(ids):
        groups.setdefault(pid, []).append(position)
    per_id = [set_partitions(positions) for positions in groups.values()]
    partitions = []
    for combination in itertools.product(*per_id):
        blocks = sorted(block for partition in combination for block in partition)
        partitions.append(tuple(blocks))
    return tuple(partitions)


def partial_matchings(
    left: Sequence[int], right: Sequence[int]
) -> list[tuple[tuple[int, int], ...]]:
    """All partial injective matchings between `left` and `right`, as (left, right) pairs."""
    if not left:
        return [()]
    head, tail = left[0], left[1:]
    out = list(partial_matchings(tail, right))
    for r in right:
        remaining = [x for x in right if x != r]
        out += [((head, r), *rest) for rest in partial_matchings(tail, remaining)]
    return out


def bell(n: int) -> int:
    """The Bell number: how many set partitions `n` items have."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]
