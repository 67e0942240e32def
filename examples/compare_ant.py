"""EPVF critics against the PPO and SAC baselines in one figure (like the paper's Figure 2,
bottom, where the baselines are dashed lines).

Give it folders: every run directory below them (a folder with config.json and metrics.csv,
written by `examples/ant_epvf_unf.py`, the study scripts or `examples/ant_baselines.py`) is
read; runs with the same config (the seeds of one setting) form one curve (mean with a min-max
band), labelled "EPVF <critic>", "PPO", "SAC" or "ES". Both panels show the deterministic policy's
return, one against environment steps and one against wall-clock time. A run's wall-clock time is
that of all the seeds trained in its program: compare methods trained with the same `--seeds`.

    python examples/ant_critics.py --preset cpu --seeds 2 --settings flat unf+params
    python examples/ant_baselines.py --algo ppo --preset cpu --seeds 2 --out runs/baselines/ppo
    python examples/ant_baselines.py --algo sac --preset cpu --seeds 2 --out runs/baselines/sac
    python examples/compare_ant.py runs/ant_critics runs/baselines --out runs/compare_ant.png
"""

import dataclasses
import json
from pathlib import Path

import tyro
from _study import Metric, plot_groups

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args:
    """Compare EPVF and baseline runs.

    Attributes:
        roots: folders to search for run directories.
        out: the PNG to write.
        metric: "eval_return" (deterministic policy) or "return_mean" (training episodes).
    """

    roots: tyro.conf.Positional[tuple[Path, ...]]
    out: Path = Path("runs/compare_ant.png")
    metric: Metric = "eval_return"


def find_runs(roots: tuple[Path, ...]) -> dict[str, dict]:
    """Every run directory below `roots` and its config."""
    runs = {}
    for root in roots:
        if not root.is_dir():
            raise SystemExit(f"{root} is not a folder")
        for config_file in sorted(root.rglob("config.json")):
            # Runs that were started over are kept in replaced_<time> folders: not compared.
            replaced = any(p.startswith("replaced_") for p in config_file.relative_to(root).parts)
            if not replaced and (config_file.parent / "metrics.csv").is_file():
                runs[str(config_file.parent)] = json.loads(config_file.read_text())
    if not runs:
        raise SystemExit(f"no run directories (config.json + metrics.csv) below {roots}")
    return runs


def _algo(config: dict) -> str:
    # Runs written before configs named their algorithm are EPVF runs.
    return config.get("algo", "epvf")


def label_of(config: dict) -> str:
    algo = _algo(config)
    return f"EPVF {config['critic']}" if algo == "epvf" else algo.upper()


def group_runs(runs: dict[str, dict]) -> tuple[dict[str, list[Path]], list[str]]:
    """Curves: runs whose configs agree (a `seed` field, which older configs held, aside); and
    the baselines' labels."""
    by_config: dict[str, list[Path]] = {}
    configs: dict[str, dict] = {}
    for path, config in runs.items():
        key = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
        by_config.setdefault(key, []).append(Path(path))
        configs[key] = config
    labels = [label_of(configs[key]) for key in by_config]
    groups, baselines = {}, []
    for key, label in zip(by_config, labels):
        if labels.count(label) > 1:
            # Two settings of one method: name them by the setting's folder (the parent of the
            # seed_<k> or seed<k> run directories, else the run directory itself).
            run = by_config[key][0]
            label = f"{label} ({run.parent.name if run.name.startswith('seed') else run.name})"
        groups[label] = by_config[key]
        if _algo(configs[key]) != "epvf":
            baselines.append(label)
    return groups, baselines


def main(args: Args) -> None:
    runs = find_runs(args.roots)
    tasks = {(c["env"], c.get("horizon")) for c in runs.values()}
    if len(tasks) > 1:
        raise SystemExit(
            f"the runs use different environments or horizons {sorted(tasks, key=str)}: "
            "compare runs of one preset"
        )
    env, horizon = tasks.pop()
    groups, baselines = group_runs(runs)
    for label, paths in groups.items():
        print(f"{label}: {len(paths)} run(s)")
    plot_groups(
        groups,
        args.out,
        title=f"EPVF vs baselines on {env} (horizon {horizon})",
        metric=args.metric,
        max_return=nfn_rl.make_env(env, horizon).max_return,
        dashed=baselines,
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
