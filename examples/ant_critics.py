"""Paper Figure 2 (bottom): the critic architectures on the MJX Ant, all with the best recipe.

Critics: `flat` (MLP on the flat policy parameters, the default), `probing` (MLP on the policy's
actions on 200 learned probing states), `probing+params` (both), `unf` (UNF invariant features of
the policy's weight space), `unf+params` (both). Each critic trains its seeds in one compiled
program (`nfn_rl.train_seeds`), seed k into OUT/<critic>/seed_<k>/; finished critics are skipped
and interrupted ones resume, so rerunning a command continues the study. The figure,
OUT/ant_critics.png, shows the unperturbed policy's return against environment steps and
wall-clock time (mean over seeds, min-max band). The PPO and SAC baselines are
`examples/ant_baselines.py`; `examples/compare_ant.py` plots both kinds of run.

    python examples/ant_critics.py                                   # paper scale, for a GPU
    python examples/ant_critics.py --preset cpu --seeds 2            # CPU-sized (2-6 min a setting)
    python examples/ant_critics.py --preset smoke --seeds 1 --settings flat unf+params
"""

import dataclasses
from pathlib import Path

import tyro
from _study import StudyArgs, preset_overrides, run_and_plot

import nfn_rl

CRITICS = ("flat", "probing", "probing+params", "unf", "unf+params")


@dataclasses.dataclass(frozen=True)
class Args(StudyArgs):
    """Figure 2, bottom.

    Attributes:
        settings: run and plot only these critics; empty = all five.
        num_envs: environments (= batch = buffer); None = the preset's.
    """

    num_envs: int | None = None
    out: Path = Path("runs/ant_critics")


def main(args: Args) -> None:
    overrides = preset_overrides(args, "num_envs", "iterations")
    grid = {
        critic: nfn_rl.ant_config(args.preset, critic=critic, **overrides) for critic in CRITICS
    }
    title = f"EPVF critics on the Ant ({args.preset} preset)"
    run_and_plot(grid, args, name="ant_critics", title=title)


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
