"""PPO and SAC on the same MJX Ant as the EPVF runs, with the same run directory and metrics.

    python examples/ant_baselines.py --algo ppo                 # CPU-sized (~5 min on 2 cores)
    python examples/ant_baselines.py --algo sac --preset paper  # brax's Ant settings, for a GPU
    python examples/ant_baselines.py --algo ppo --seed 1 --out runs/baselines/ppo/seed1
    python examples/ant_baselines.py --algo ppo --out runs/ant_ppo --resume   # continue a run

Each preset trains on its EPVF preset's environment and horizon (`cpu`: the torque Ant, 200
steps; `paper`: the position Ant, 1000 steps), so `examples/compare_ant.py` can put both in one
figure. The run directory gets config.json, metrics.csv (`eval_return` = the deterministic
policy's return), checkpoint.eqx and returns.png. Evaluate a trained policy afterwards with

    python examples/ant_baselines.py --evaluate --out runs/ant_ppo
"""

import dataclasses
import os
import time
from pathlib import Path
from typing import Literal

import jax
import tyro

import nfn_rl
from nfn_rl import baselines


@dataclasses.dataclass(frozen=True)
class Args:
    """A PPO or SAC baseline on the MJX Ant.

    Attributes:
        algo: "ppo" or "sac".
        preset: "smoke" (< 1 min, a test), "cpu" (about 5 min on 2 cores), "paper" (GPU).
        seed: seed of initialisation and of all randomness.
        out: run directory; default runs/ant_<algo>.
        resume: continue the run in OUT from its checkpoint.
        evaluate: don't train: load OUT's checkpoint and report its policy's return.
        progress: show a progress bar.
    """

    algo: Literal["ppo", "sac"] = "ppo"
    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    evaluate: bool = False
    progress: bool = True


def main(args: Args) -> None:
    start = time.perf_counter()
    out = args.out or Path(f"runs/ant_{args.algo}")
    if args.evaluate:
        trainer, state = baselines.load_run(out)
    else:
        config = baselines.baseline_config(args.algo, args.preset, seed=args.seed)
        trainer, state = baselines.train(
            config, out_dir=out, resume=args.resume, progress=args.progress
        )
    policy = trainer.policy(state)
    episode_return = jax.jit(lambda key: nfn_rl.episode_return(trainer.env, policy, key))
    eval_return = float(episode_return(jax.random.key(0)))
    rows = nfn_rl.read_metrics(out / "metrics.csv")
    env_steps = rows[-1]["env_steps"] if rows else 0
    print(
        f"eval_return={eval_return:.2f} (max {trainer.env.max_return:.0f}) "
        f"env_steps={env_steps} wall_s={time.perf_counter() - start:.1f} run={out}"
    )


if __name__ == "__main__":
    # A second run of the same config then skips most of the XLA compilation.
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/nfn/jax")),
    )
    main(tyro.cli(Args))
