"""EPVF on Cartpole: `python examples/cartpole_epvf.py [--num-envs 16 ...] [--out DIR] [--resume]`.

Every `EPVFConfig` field is a flag; the defaults solve Cartpole (evaluation return 500) within a
minute on a 2-core CPU. The run directory gets config.json, metrics.csv, checkpoint.eqx and
returns.png.
"""

import os
import time
from pathlib import Path
from typing import Annotated

import jax
import tyro

import nfn_rl

DEFAULT = nfn_rl.EPVFConfig()


def main(
    config: Annotated[nfn_rl.EPVFConfig, tyro.conf.arg(name="")] = DEFAULT,
    out: Path = Path("runs/cartpole_epvf"),
    resume: bool = False,
    progress: bool = True,
) -> None:
    """Train an EPVF on Cartpole and record the run in OUT.

    Args:
        config: the EPVF hyperparameters.
        out: run directory.
        resume: continue from OUT/checkpoint.eqx.
        progress: show a progress bar.
    """
    start = time.perf_counter()
    trainer, state = nfn_rl.train(config, out_dir=out, resume=resume, progress=progress)
    returns = jax.vmap(lambda k: nfn_rl.episode_return(trainer.env, trainer.policy(state), k))(
        jax.random.split(jax.random.key(12345), 100)
    )
    print(
        f"final policy: mean return {float(returns.mean()):.1f} over 100 episodes "
        f"(max {trainer.env.max_return:.0f}); {time.perf_counter() - start:.1f} s; run in {out}"
    )


if __name__ == "__main__":
    # A second run of the same config then skips most of the XLA compilation.
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/nfn/jax")),
    )
    tyro.cli(main)
