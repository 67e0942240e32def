"""Paper Figure 2 (top left): EPVF on the MJX Ant with 256 ... 4096 parallel environments, where the
batch size (and the buffer, the paper's recipe) equals the number of environments.

Each number of environments trains its seeds in one compiled program (`nfn_rl.train_seeds`),
seed k into OUT/envs<N>/seed_<k>/; finished settings are skipped and interrupted ones resume, so
rerunning a command continues the study. The figure, OUT/ant_env_scaling.png, shows the
unperturbed policy's return against environment steps and wall-clock time (mean over seeds,
min-max band).

    python examples/ant_env_scaling.py                                # paper scale, for a GPU
    python examples/ant_env_scaling.py --preset cpu --num-envs 64 256 # CPU-sized
    python examples/ant_env_scaling.py --preset smoke --seeds 1 --settings envs256   # a check

Cost: every seed takes `iterations x N x horizon` environment steps; the `paper` preset's 4096
setting is 250 x 4096 x 1000 = 1e9 steps (MJX on 2 CPU cores: ~6,000 steps/s, so a GPU job), the
`cpu` preset's is 60 x 4096 x 200 = 4.9e7 (about 2 h on 2 CPU cores).
"""

import dataclasses
from pathlib import Path
from typing import Literal

import tyro
from _study import StudyArgs, preset_overrides, run_and_plot

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args(StudyArgs):
    """Figure 2, top left.

    Attributes:
        num_envs: the numbers of environments (= batch = buffer) to compare.
        settings: run and plot only these settings (names envs<N>); empty = all.
        critic: the critic of every run (the paper's default is the MLP on the flat parameters).
    """

    num_envs: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    critic: Literal["flat", "probing", "probing+params", "unf", "unf+params"] = "flat"
    out: Path = Path("runs/ant_env_scaling")


def main(args: Args) -> None:
    overrides = preset_overrides(args, "iterations")
    grid = {
        f"envs{n}": nfn_rl.ant_config(args.preset, critic=args.critic, num_envs=n, **overrides)
        for n in args.num_envs
    }
    title = f"EPVF on the Ant ({args.preset} preset, {args.critic} critic), envs = batch"
    labels = {k: f"{c.num_envs} envs" for k, c in grid.items()}
    run_and_plot(grid, args, name="ant_env_scaling", title=title, labels=labels)


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
