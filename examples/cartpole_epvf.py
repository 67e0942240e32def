"""EPVF on Cartpole: `python examples/cartpole_epvf.py [--config.num-envs 16 ...] [--seeds 3]`.

Every `EPVFConfig` field is a flag; the defaults solve Cartpole (evaluation return 500) within a
minute on a 2-core CPU. Each run directory gets config.json, metrics.csv, checkpoint.eqx and
returns.png; with `--seeds N` the seeds train in one compiled program, each into OUT/seed_<s>,
with the same metrics as N single-seed runs.
"""

import time
from pathlib import Path

import _cli
import jax
import tyro

import nfn_rl

DEFAULT = nfn_rl.EPVFConfig()


def main(
    config: nfn_rl.EPVFConfig = DEFAULT,
    seed: int = 0,
    seeds: int = 1,
    out: Path = Path("runs/cartpole_epvf"),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Train an EPVF on Cartpole and record the run(s) in OUT.

    Args:
        config: the EPVF hyperparameters.
        seed: the first seed.
        seeds: how many seeds to train (seed, seed + 1, ...).
        out: run directory.
        resume: continue from the checkpoint(s) in OUT.
        overwrite: start over in OUT, moving a run there into OUT/replaced_<time>/.
        progress: show a progress bar.
    """
    start = time.perf_counter()
    seed_list = list(range(seed, seed + seeds))
    trainer, states = nfn_rl.train_seeds(
        config,
        seeds=seed_list,
        out_dir=out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    dirs = nfn_rl.run.run_dirs(out, seed_list)
    keys = jax.random.split(jax.random.key(12345), 100)
    for index in range(seeds):
        policy = trainer.policy(jax.tree.map(lambda x, i=index: x[i], states))
        returns = _cli.episode_returns(trainer.env, policy, keys)
        print(
            f"seed {seed + index}: final policy's mean return {float(returns.mean()):.1f} over "
            f"100 episodes (max {trainer.env.max_return:.0f}); "
            f"{time.perf_counter() - start:.1f} s; run in {dirs[index]}"
        )


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    _cli.run(lambda: tyro.cli(main))
