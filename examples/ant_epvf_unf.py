"""The main job: EPVF with a UNF critic on the custom Ant (native MuJoCo on a CPU, MJX otherwise).

    python examples/ant_epvf_unf.py                      # CPU-sized default (~3 min on 2 cores)
    python examples/ant_epvf_unf.py --preset paper       # the paper's scale, for a GPU
    python examples/ant_epvf_unf.py --critic flat --num-envs 512 --out runs/ant_flat
    python examples/ant_epvf_unf.py --seeds 3            # seeds 0, 1, 2 in one program
    python examples/ant_epvf_unf.py --out runs/ant_epvf_unf --resume   # continue a run

`--preset`, `--critic` and `--ablation` choose the starting config; every field of it is a flag
of its own (`--help` lists them). Each run directory gets config.json, metrics.csv,
checkpoint.eqx and returns.png. Evaluate the trained policy of a run directory afterwards with

    python examples/ant_epvf_unf.py --evaluate --out runs/ant_epvf_unf
"""

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Literal

# MuJoCo picks its OpenGL backend at import: EGL renders offscreen on a headless machine.
os.environ.setdefault("MUJOCO_GL", "egl")

import _cli  # noqa: E402
import equinox as eqx  # noqa: E402

import nfn_rl  # noqa: E402
from nfn_rl import envs  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args(_cli.RunFlags):
    """EPVF on the custom Ant.

    Attributes:
        preset: starting config: "smoke" (< 1 min, a test), "cpu" (about 3 min on 2 cores),
            "paper" (GPU).
        critic: starting config's critic reading the policy's parameters.
        ablation: starting config's change to the paper's recipe (default: the best setup).
        num_envs: starting config's environments per iteration, which the recipe also makes
            its batch and buffer (None: the preset's). `--config.num-envs` changes only the
            environments.
        config: every EPVF hyperparameter, starting from the preset, critic and ablation.
        out: run directory.
        allow_backend_change: with --resume, continue on this machine's simulator even where
            the run used the other one (native MuJoCo or MJX); refused otherwise.
    """

    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    critic: Literal["flat", "probing", "probing+params", "unf", "unf+params"] = "unf+params"
    ablation: str = "best"
    num_envs: int | None = None
    config: nfn_rl.EPVFConfig = nfn_rl.EPVFConfig()
    out: Path = Path("runs/ant_epvf_unf")
    allow_backend_change: bool = False


def default_args(preset: str, critic: str, ablation: str, num_envs: str | None) -> Args:
    overrides = {} if num_envs is None else {"num_envs": int(num_envs)}
    config = nfn_rl.ant_config(preset, critic=critic, ablation=ablation, **overrides)
    return Args(preset=preset, critic=critic, ablation=ablation, config=config, **overrides)


def main(args: Args) -> None:
    start = time.perf_counter()
    _cli.train(args, args.out, allow_backend_change=args.allow_backend_change)
    _cli.report(args.out, start=start)
    for run in _cli.seed_runs(args.out):
        save_pictures(run)


def save_pictures(run: Path) -> None:
    """The final policy's episode as `episode.gif` in the run directory, or, where MuJoCo
    cannot render, its path and forward velocity as `episode.png`."""
    trainer, state, _ = nfn_rl.load_run(run)
    policy = trainer.policy(state)
    # Episodes are recorded for the Ant's MLP policies (an EPVF run); --evaluate also reads
    # other runs.
    if not isinstance(trainer.env, envs.Ant) or not isinstance(policy, eqx.nn.MLP):
        return
    trajectory = envs.record_episode(trainer.env, policy)
    # Every process of a multi-process run computes the episode alike; one writes it.
    if not nfn_rl.is_main_process():
        return
    try:
        envs.save_episode_animation(trainer.env, trajectory, run / "episode.gif")
    except envs.RenderingUnavailable as error:
        plot = envs.save_episode_plot(trainer.env, trajectory, run / "episode.png")
        print(f"no animation: {error}; the episode's path and speed are in {plot}")


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    _cli.run(
        lambda: main(
            _cli.parse(
                Args, default_args, ("preset", "critic", "ablation", "num_envs"), sys.argv[1:]
            )
        )
    )
