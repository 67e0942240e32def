"""PPO, SAC or ES on the Ant, for the EPVF comparison (same environments, run format and
evaluation as `examples/ant_epvf_unf.py`; ES also the same populations).

    python examples/ant_baselines.py --algo ppo                 # CPU-sized default
    python examples/ant_baselines.py --algo es                  # the main job's populations
    python examples/ant_baselines.py --algo sac --preset paper  # Brax's published settings
    python examples/ant_baselines.py --algo ppo --config.num-envs 512 --seeds 3
    python examples/ant_baselines.py --algo ppo --evaluate --out runs/ant_ppo

`--algo` and `--preset` choose the starting config; every field of it is a flag of its own.
"""

import dataclasses
import sys
import time
from pathlib import Path
from typing import Literal

import _cli

import nfn_rl
from nfn_rl import baselines


@dataclasses.dataclass(frozen=True)
class Args(_cli.RunFlags):
    """A PPO, SAC or ES baseline on the Ant.

    Attributes:
        algo: starting config's algorithm, "ppo", "sac" or "es" (OpenAI-ES on the EPVF
            preset's populations).
        preset: starting config: "smoke" (< 1 min, a test), "cpu" (about 5 min on 2 cores),
            "paper" (GPU).
        config: every hyperparameter of the algorithm, starting from the preset.
        out: run directory; default runs/ant_<algo>.
    """

    algo: Literal["ppo", "sac", "es"] = "ppo"
    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    config: baselines.BaselineConfig | baselines.ESConfig = baselines.PPOConfig()
    out: Path | None = None


def default_args(algo: str, preset: str) -> Args:
    # The chosen algorithm's own Args type, so that its config's fields are the flags.
    config = baselines.baseline_config(algo, preset)
    return _cli.with_config_type(Args, type(config))(algo=algo, preset=preset, config=config)


def main(args: Args) -> None:
    start = time.perf_counter()
    out = args.out or Path(f"runs/ant_{args.algo}")
    _cli.train(args, out)
    _cli.report(out, start=start)


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    _cli.run(lambda: main(_cli.parse(Args, default_args, ("algo", "preset"), sys.argv[1:])))
