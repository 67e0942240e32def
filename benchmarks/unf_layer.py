"""Forward+backward time and compile time of `nfn.EquivariantLinear` against a naive per-term UNF.

    python benchmarks/unf_layer.py [--quick | --policy] [--naive-max-depth 16] [--naive-timeout 120]

Weight spaces:

- Policy-sized MLPs with fixed input and output (`io="fixed"`), first in the table: the EPVF Ant
  policy 34 -> 32 -> 32 -> 8 at 8 channels, and 34 -> (2 or 3 hidden layers of 32 or 64) -> 8 at
  16 channels. `--policy` runs only these.
- MLP (`eqx.nn.MLP`, `depth` hidden layers) with the NP spec (`nfn.weight_space(mlp,
  io="permuted")`: input and output neurons permuted too) and the true-symmetry spec
  (`io="fixed"`: input/output neurons fixed, folded into the channels), depth 2, 4, 8, 12, 16
  at width 64 and 16 channels, plus NP at width 256 / 8 channels (depth 2) and width 32 / 32
  channels (depth 8).
- RNN (hidden 64, input 16, output 8): W_ih (h, None), W_hh (h, h) (a tie), b (h,),
  readout (None, h).
- Transformer block, written by hand (pre-LN, no attention biases):
  ln1 (r,), W_q, W_k, W_v (heads, d_head, r), W_o (r, heads, d_head), ln2 (r,),
  W_1 (m, r), b_1 (m,), W_2 (r, m), b_2 (r,) (r=32, 4 heads of 8, m=64), with ids: `head`
  shared by Q/K/V/O, a within-head id `qk` shared by Q and K (the contracted dimension of the
  scores) and another `vo` shared by V and O, `mlp` for the MLP hidden units. A shared
  within-head permutation is a subgroup of the true symmetry (which may permute each head's
  dimensions independently, a wreath product that ids cannot express). The residual stream
  `r`: we benchmark both *fixed* (the block as a function of its inputs: the true symmetry of
  one block in isolation, like `io="fixed"`; r is folded into the channels, so it is dense and
  much heavier) and *permuted* (the residual basis permuted by one id, as in a whole
  transformer where the embedding, every block, final LN and unembedding share it; LayerNorm's
  mean/variance are invariant to it).

Every layer acts on a batch of 16 networks (`jax.vmap` over the features). Timed: the loss
`sum(out**2)` and its gradient with respect to the layer's parameters and the input features,
jitted; "compile s" is the fastest of `--compile-repeats` trace + lower + XLA compiles of that
function (in-memory caches cleared in between); "ms" the fastest of `--repeats` fwd+bwd calls
after two warm-up calls, each with `jax.block_until_ready` (the fastest, not the median: on a
shared 2-core machine the median of one configuration moves by 30% from run to run, the fastest
by a few percent). The layers of one configuration (nfn, naive and both floors) are timed
interleaved, one call of each in turn, so that a change in the machine's load hits all of them.
The ratios to the floors are given twice: from wall time, and from the process's CPU time per
call (all threads, fastest of the same calls), which is what a layer costs when other
processes keep the cores busy and which moves much less with their load.

The naive baseline (benchmarks/_naive_unf.py) runs one op chain per (output leaf, input leaf,
partition) with the nfn layer's own parameters; before timing, each configuration where both
run checks that they give the same outputs (max relative difference printed). Its compile time
grows quickly, so it runs only up to `--naive-max-depth` for MLPs and is skipped once a naive
compile took more than `--naive-timeout` seconds (the output says which rows were skipped).

Two floors:

- "1-term ms" is the cheapest layer with the same inputs and outputs: each leaf's features times
  one `(fan_in, fan_out)` matrix, which is the identity basis map alone. Every complete
  equivariant layer contains that map, so an implementation cannot be expected to beat this
  time, and `naive / 1-term` ("ceiling") bounds the fwd+bwd speed-up over the naive layer that
  any implementation could reach with XLA on this machine.
- "2-term ms" adds, for every leaf with a permuted axis, the second kind of map that every
  complete basis has: the leaf's mean over its permuted axes, times a `(fan_in, fan_out)` matrix,
  broadcast back over those axes and added to the identity map's output. It is the cheapest
  layer with the *structure* of a complete one (a reduction over the permuted axes, a small
  matmul and a broadcast add per leaf, in the forward pass and again in the backward), with none
  of the basis's other terms; `nfn/2-term` is how far nfn is from that.
"""

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import nfn
from nfn._basis import fold, unfold

sys.path.insert(0, str(Path(__file__).parent))
from _naive_unf import NaiveEquivariantLinear, check_against_nfn, num_parameters  # noqa: E402

BATCH = 16


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    space: nfn.WeightSpace
    channels: int
    depth: int | None = None


def mlp_space(depth, width, io, in_size=16, out_size=8):
    mlp = eqx.nn.MLP(in_size, out_size, width, depth, key=jax.random.key(0))
    return nfn.weight_space(mlp, io=io)


def rnn_space(hidden, in_size=16, out_size=8):
    params = {
        "W_ih": np.zeros((hidden, in_size), np.float32),
        "W_hh": np.zeros((hidden, hidden), np.float32),
        "b": np.zeros((hidden,), np.float32),
        "readout": np.zeros((out_size, hidden), np.float32),
    }
    spec = {"W_ih": (0, None), "W_hh": (0, 0), "b": (0,), "readout": (None, 0)}
    return nfn.WeightSpace.from_spec(params, spec)


def transformer_space(residual, heads=4, d_head=16, mlp=128, *, residual_permuted):
    head, qk, vo, hidden = 0, 1, 2, 3
    r = 4 if residual_permuted else None
    z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    params = {
        "ln1": z(residual),
        "W_q": z(heads, d_head, residual),
        "W_k": z(heads, d_head, residual),
        "W_v": z(heads, d_head, residual),
        "W_o": z(residual, heads, d_head),
        "ln2": z(residual),
        "W_1": z(mlp, residual),
        "b_1": z(mlp),
        "W_2": z(residual, mlp),
        "b_2": z(residual),
    }
    spec = {
        "ln1": (r,),
        "W_q": (head, qk, r),
        "W_k": (head, qk, r),
        "W_v": (head, vo, r),
        "W_o": (r, head, vo),
        "ln2": (r,),
        "W_1": (hidden, r),
        "b_1": (hidden,),
        "W_2": (r, hidden),
        "b_2": (r,),
    }
    return nfn.WeightSpace.from_spec(params, spec)


def policy_configs():
    """Policy-sized MLPs with the Ant policy's input and output (34 observations, 8 actions)."""
    out = [Config("Ant policy 34-32-32-8 C=8", mlp_space(2, 32, "fixed", 34, 8), 8, 2)]
    for width in (32, 64):
        for d in (2, 3):
            name = f"policy d={d} w={width} C=16"
            out.append(Config(name, mlp_space(d, width, "fixed", 34, 8), 16, d))
    return out


def configs(quick, policy):
    out = policy_configs()
    if policy:
        return out
    depths = (2, 4) if quick else (2, 4, 8, 12, 16)
    for io, tag in (("permuted", "NP"), ("fixed", "fixed-IO")):
        for d in depths:
            out.append(Config(f"MLP {tag} d={d} w=64 C=16", mlp_space(d, 64, io), 16, d))
    if not quick:
        out.append(Config("MLP NP d=2 w=256 C=8", mlp_space(2, 256, "permuted"), 8, 2))
        out.append(Config("MLP NP d=8 w=32 C=32", mlp_space(8, 32, "permuted"), 32, 8))
    out.append(Config("RNN h=64 C=16", rnn_space(64), 16))
    block = dict(heads=4, d_head=8, mlp=64)
    out.append(
        Config("Transf. r=32 perm C=16", transformer_space(32, **block, residual_permuted=True), 16)
    )
    out.append(
        Config("Transf. r=32 fixed C=8", transformer_space(32, **block, residual_permuted=False), 8)
    )
    return out


def features(space, channels, key):
    return space.unflatten(
        [
            jax.random.normal(jax.random.fold_in(key, n), (BATCH, *leaf.shape, channels))
            for n, leaf in enumerate(space.leaves)
        ]
    )


class SingleTermLayer(eqx.Module):
    """The identity basis map alone: each leaf's folded features times its own matrix."""

    weights: tuple[jax.Array, ...]
    space: nfn.WeightSpace = eqx.field(static=True)

    def __init__(self, space, channels, *, key):
        self.space = space
        self.weights = tuple(
            jax.random.normal(jax.random.fold_in(key, n), (2 * (leaf.fixed_size * channels,)))
            / np.sqrt(leaf.fixed_size * channels)
            for n, leaf in enumerate(space.leaves)
        )

    def __call__(self, features):
        leaves = self.space.flatten(features, channels=True)
        return self.space.unflatten(
            [
                unfold(leaf, fold(leaf, x) @ w)
                for leaf, x, w in zip(self.space.leaves, leaves, self.weights)
            ]
        )


class TwoTermLayer(eqx.Module):
    """The identity map plus, on each leaf with a permuted axis, its mean over those axes times
    a second matrix, broadcast back over them."""

    weights: tuple[jax.Array, ...]
    pooled_weights: tuple[jax.Array | None, ...]
    space: nfn.WeightSpace = eqx.field(static=True)

    def __init__(self, space, channels, *, key):
        self.space = space
        self.weights = SingleTermLayer(space, channels, key=key).weights
        pooled_key = jax.random.fold_in(key, len(space.leaves))
        self.pooled_weights = tuple(
            jax.random.normal(
                jax.random.fold_in(pooled_key, n), (2 * (leaf.fixed_size * channels,))
            )
            / np.sqrt(leaf.fixed_size * channels)
            if leaf.permuted_ids
            else None
            for n, leaf in enumerate(space.leaves)
        )

    def __call__(self, features):
        outputs = []
        for leaf, x, w, v in zip(
            self.space.leaves,
            self.space.flatten(features, channels=True),
            self.weights,
            self.pooled_weights,
        ):
            x = fold(leaf, x)
            y = x @ w
            if v is not None:
                y = y + jnp.mean(x, axis=tuple(range(x.ndim - 1))) @ v
            outputs.append(unfold(leaf, y))
        return self.space.unflatten(outputs)


def compile_step(layer, feats, compile_repeats=1):
    """(fastest compile seconds, a call of the compiled fwd+bwd, forward output)."""

    def loss(model, x):
        out = jax.vmap(lambda f: model(f))(x)
        return sum(jnp.sum(y**2) for y in jax.tree_util.tree_leaves(out))

    params, static = eqx.partition(layer, eqx.is_array)

    def step(params, x):
        return jax.value_and_grad(lambda p, x: loss(eqx.combine(p, static), x), argnums=(0, 1))(
            params, x
        )

    compile_s = float("inf")
    for _ in range(compile_repeats):
        jax.clear_caches()  # or the next compile is an in-memory cache hit
        start = time.perf_counter()
        compiled = jax.jit(step).lower(params, feats).compile()
        compile_s = min(compile_s, time.perf_counter() - start)
    forward = jax.jit(jax.vmap(lambda f: layer(f)))(feats)
    return compile_s, lambda: compiled(params, feats), forward


def fastest_ms(calls, repeats):
    """Fastest of `repeats` timed calls of each, interleaved, after two warm-up calls: wall
    time, and the process's CPU time (all threads) per call."""
    for call in calls:
        for _ in range(2):
            jax.block_until_ready(call())
    wall = [float("inf")] * len(calls)
    cpu = [float("inf")] * len(calls)
    for _ in range(repeats):
        for k, call in enumerate(calls):
            start_cpu, start = time.process_time(), time.perf_counter()
            jax.block_until_ready(call())
            wall[k] = min(wall[k], time.perf_counter() - start)
            cpu[k] = min(cpu[k], time.process_time() - start_cpu)
    return [1e3 * t for t in wall], [1e3 * t for t in cpu]


def max_rel_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-12))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a small subset (sanity check)")
    group.add_argument("--policy", action="store_true", help="only the policy-sized group")
    parser.add_argument("--repeats", type=int, default=20, help="fwd+bwd calls timed")
    parser.add_argument(
        "--compile-repeats", type=int, default=2, help="compiles timed (the fastest is shown)"
    )
    parser.add_argument(
        "--naive-max-depth", type=int, default=16, help="run the naive layer up to this MLP depth"
    )
    parser.add_argument(
        "--naive-timeout",
        type=float,
        default=120.0,
        help="skip the naive layer for larger spaces of a family once its compile took longer",
    )
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()}")
    print(f"uname: {' '.join(platform.uname())}")
    print(f"cpus: {os.cpu_count()}  devices: {jax.devices()}  load average: {os.getloadavg()}")
    print(
        f"jax {jax.__version__}  jaxlib {jaxlib.__version__}  equinox {eqx.__version__}  "
        f"numpy {np.__version__}  python {platform.python_version()}"
    )
    print(
        f"batch {BATCH} networks (vmap), float32, fastest of {args.repeats} interleaved runs "
        f"after warm-up and of {args.compile_repeats} compiles"
    )
    print(
        f"naive: MLPs up to depth {args.naive_max_depth}; skipped for larger spaces of a family "
        f"once a naive compile took > {args.naive_timeout:.0f} s"
    )

    key = jax.random.key(0)
    print("\ncorrectness of the naive baseline (same parameters as nfn, tiny spaces, jit):")
    small = {
        "RNN h=3 (tie)": rnn_space(3, 2, 2),
        "MLP NP d=2 w=4": mlp_space(2, 4, "permuted", 3, 2),
        "MLP fixed-IO d=2 w=4": mlp_space(2, 4, "fixed", 3, 2),
        "Transformer r=4 perm": transformer_space(4, 2, 3, 5, residual_permuted=True),
    }
    for name, space in small.items():
        err, equi = check_against_nfn(space, key=key)
        print(
            f"  {name:24s} terms {nfn.count_equivariant_terms(space):4d}  "
            f"max rel |nfn - naive| {err:.1e}  naive equivariance error {equi:.1e}"
        )

    header = (
        f"\n{'config':28s} {'leaves':>6s} {'terms':>6s} {'params':>9s} | "
        f"{'nfn comp s':>10s} {'nfn ms':>8s} | {'naive comp s':>12s} {'naive ms':>9s} | "
        f"{'1-term ms':>9s} {'2-term ms':>9s} | {'comp x':>7s} {'run x':>6s} {'ceiling':>7s} "
        f"{'nfn/1-term':>10s} {'nfn/2-term':>10s} {'cpu/1t':>7s} {'cpu/2t':>7s} | "
        f"{'rel diff':>8s}"
    )
    print(header)
    print("-" * (len(header) - 1))
    skip_family: dict[str, float] = {}
    rows = []
    for config in configs(args.quick, args.policy):
        space, channels = config.space, config.channels
        layer = nfn.EquivariantLinear(space, channels, channels, key=key)
        feats = features(space, channels, jax.random.fold_in(key, 1))
        terms = nfn.count_equivariant_terms(space)
        comp, call, out = compile_step(layer, feats, args.compile_repeats)
        calls = [call]
        for floor in (SingleTermLayer, TwoTermLayer):
            calls.append(compile_step(floor(space, channels, key=key), feats)[1])
        family = config.name.split(" d=")[0] if config.depth is not None else config.name
        skip = None
        if config.depth is not None and config.depth > args.naive_max_depth:
            skip = f"skipped (depth > {args.naive_max_depth})"
        elif family in skip_family:
            skip = f"skipped (compile {skip_family[family]:.0f}s > timeout)"
        if skip is None:
            naive = NaiveEquivariantLinear.from_nfn(layer)
            assert naive.num_terms == terms
            ncomp, naive_call, nout = compile_step(naive, feats, args.compile_repeats)
            diff = max_rel_diff(out, nout)
            if ncomp > args.naive_timeout and config.depth is not None:
                skip_family[family] = ncomp
            calls.append(naive_call)
        (ms, floor_ms, floor2_ms, *naive_ms), (cpu, floor_cpu, floor2_cpu, *_) = fastest_ms(
            calls, args.repeats
        )
        line = (
            f"{config.name:28s} {len(space.leaves):6d} {terms:6d} {num_parameters(layer):9d} | "
            f"{comp:10.2f} {ms:8.2f} | "
        )
        floors = f"{floor_ms:9.2f} {floor2_ms:9.2f}"
        ratios = (
            f"{ms / floor_ms:9.2f}x {ms / floor2_ms:9.2f}x "
            f"{cpu / floor_cpu:6.2f}x {cpu / floor2_cpu:6.2f}x"
        )
        if skip is None:
            (nms,) = naive_ms
            line += (
                f"{ncomp:12.2f} {nms:9.2f} | {floors} | {ncomp / comp:6.1f}x "
                f"{nms / ms:5.1f}x {nms / floor_ms:6.1f}x {ratios} | {diff:8.1e}"
            )
            rows.append((config, comp, ms, ncomp, nms, floor_ms))
        else:
            line += f"{skip:22s} | {floors} | {' ' * 22} {ratios} |"
            rows.append((config, comp, ms, None, None, floor_ms))
        print(line, flush=True)

    compared = [r for r in rows if r[3] is not None]
    if compared:
        print(
            "\nagainst the naive layer, where it ran (comp x = naive/nfn compile, run x = "
            "naive/nfn fwd+bwd, ceiling = naive/1-term: the largest fwd+bwd speed-up any layer "
            "could show):"
        )
        for name, values in (
            ("compile", [r[3] / r[1] for r in compared]),
            ("fwd+bwd", [r[4] / r[2] for r in compared]),
            ("ceiling", [r[4] / r[5] for r in compared]),
        ):
            print(f"  {name:8s} {min(values):5.1f}x to {max(values):5.1f}x")
        at_least_5 = [r[0].name for r in compared if r[3] / r[1] >= 5]
        print(f"  compile >= 5x: {', '.join(at_least_5) if at_least_5 else 'none'}")
        below = [r[0].name for r in compared if r[4] / r[5] < 5]
        print(f"  ceiling < 5x (a 5x fwd+bwd gain is out of reach): {', '.join(below) or 'none'}")
    print(f"\nload average at the end: {os.getloadavg()} (timings are noisy on a shared machine)")
    print("\nnfn compile time per leaf (MLP depth sweeps, width 64):")
    for tag in ("NP", "fixed-IO"):
        pts = [
            (len(c.space.leaves), comp)
            for c, comp, *_ in rows
            if c.name.startswith(f"MLP {tag} d=") and "w=64" in c.name
        ]
        if len(pts) >= 2:
            x, y = np.array(pts, float).T
            slope, intercept = np.polyfit(x, y, 1)
            per_leaf = ", ".join(f"{int(a)}: {b / a * 1e3:.0f} ms" for a, b in pts)
            print(
                f"  {tag:8s} leaves -> compile s/leaf: {per_leaf}; linear fit "
                f"{intercept:.2f} s + {slope * 1e3:.0f} ms/leaf"
            )


if __name__ == "__main__":
    main()
