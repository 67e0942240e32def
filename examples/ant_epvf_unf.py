"""The main job: EPVF with a UNF critic on the custom MJX Ant.

    python examples/ant_epvf_unf.py                      # CPU-sized default (~3 min on 2 cores)
    python examples/ant_epvf_unf.py --preset paper       # the paper's scale, for a GPU
    python examples/ant_epvf_unf.py --critic flat --seed 1 --out runs/ant_flat
    python examples/ant_epvf_unf.py --out runs/ant_epvf_unf --resume   # continue a run

The run directory gets config.json, metrics.csv, checkpoint.eqx and returns.png. Evaluate the
trained policy of a run directory afterwards with

    python examples/ant_epvf_unf.py --evaluate --out runs/ant_epvf_unf
"""

import dataclasses
import os
import time
from pathlib import Path
from typing import Literal

import jax
import tyro

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args:
    """EPVF on the MJX Ant.

    Attributes:
        preset: "smoke" (< 1 min, a test), "cpu" (about 3 min on 2 cores), "paper" (GPU).
        critic: the critic reading the policy's parameters.
        ablation: one of the paper's ablations of the recipe (default: the best setup).
        seed: seed of initialisation and of every iteration's randomness.
        out: run directory.
        resume: continue the run in OUT from its checkpoint.
        evaluate: don't train: load OUT's checkpoint and report its policy's return.
        progress: show a progress bar.
    """

    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    critic: Literal["flat", "probing", "probing+params", "unf", "unf+params"] = "unf+params"
    ablation: str = "best"
    seed: int = 0
    out: Path = Path("runs/ant_epvf_unf")
    resume: bool = False
    evaluate: bool = False
    progress: bool = True


def main(args: Args) -> None:
    start = time.perf_counter()
    config = nfn_rl.ant_config(
        args.preset, critic=args.critic, ablation=args.ablation, seed=args.seed
    )
    if args.evaluate:
        config = nfn_rl.EPVFConfig.from_json((args.out / "config.json").read_text())
        trainer = nfn_rl.make_train(config)
        state, _ = nfn_rl.load_checkpoint(args.out / "checkpoint.eqx", trainer)
        policy = trainer.policy(state)
    else:
        trainer, state = nfn_rl.train(
            config, out_dir=args.out, resume=args.resume, progress=args.progress
        )
        policy = trainer.policy(state)
    episode_return = jax.jit(lambda key: nfn_rl.episode_return(trainer.env, policy, key))
    eval_return = float(episode_return(jax.random.key(0)))
    rows = nfn_rl.read_metrics(args.out / "metrics.csv")
    env_steps = rows[-1]["env_steps"] if rows else 0
    print(
        f"eval_return={eval_return:.2f} (max {trainer.env.max_return:.0f}) "
        f"env_steps={env_steps} wall_s={time.perf_counter() - start:.1f} run={args.out}"
    )


if __name__ == "__main__":
    # A second run of the same config then skips most of the XLA compilation.
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/nfn/jax")),
    )
    main(tyro.cli(Args))
