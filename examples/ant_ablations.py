"""Paper Figure 2 (top right): the ablations of the scaled EPVF recipe on the MJX Ant.

Every name in `nfn_rl.ABLATIONS` is one change to the best setup (`best`): multiple policies, a 100x
buffer, a fixed policy learning rate, noise scale 1.0, no weight clipping, clipped perturbations
instead of clipped weights, Gaussian noise. Each ablation trains its seeds in one compiled
program (`nfn_rl.train_seeds`), seed k into OUT/<ablation>/seed_<k>/; finished ablations are
skipped and interrupted ones resume, so rerunning a command continues the study. The figure,
OUT/ant_ablations.png, shows the unperturbed policy's return against environment steps and
wall-clock time (mean over seeds, min-max band).

    python examples/ant_ablations.py                                  # paper scale, for a GPU
    python examples/ant_ablations.py --preset cpu --seeds 2           # CPU-sized (~2 min a setting)
    python examples/ant_ablations.py --preset smoke --seeds 1 --settings best no_weight_clip

With `multiple_policies` the evaluation return is the mean over all trained policies.
"""

import dataclasses
from pathlib import Path
from typing import Literal

import tyro
from _study import StudyArgs, preset_overrides, run_and_plot

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args(StudyArgs):
    """Figure 2, top right.

    Attributes:
        settings: run and plot only these ablations (names of `nfn_rl.ABLATIONS`); empty = all.
        critic: the critic of every run (the paper's default is the MLP on the flat parameters).
        num_envs: environments (= batch, and the buffer but for `buffer_100x`); None = the
            preset's.
    """

    critic: Literal["flat", "probing", "probing+params", "unf", "unf+params"] = "flat"
    num_envs: int | None = None
    out: Path = Path("runs/ant_ablations")


def main(args: Args) -> None:
    overrides = preset_overrides(args, "num_envs", "iterations")
    grid = {
        name: nfn_rl.ant_config(args.preset, critic=args.critic, ablation=name, **overrides)
        for name in nfn_rl.ABLATIONS
    }
    title = f"EPVF ablations on the Ant ({args.preset} preset, {args.critic} critic)"
    run_and_plot(grid, args, name="ant_ablations", title=title)


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
