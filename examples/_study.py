"""Shared pieces of the Ant studies (paper Figure 2): train a grid of settings into one folder,
each setting's seeds in one compiled program (`nfn_rl.train_seeds`), resumably, and plot them as
one figure.

Layout: `OUT/<setting>/seed_<k>/` holds seed k's run (config.json, metrics.csv, checkpoint.eqx,
returns.png); the figure goes to `OUT/<name>.png`. Rerunning the same command continues a study:
a setting whose every seed has all its iterations is skipped; the seeds still to train resume
from their checkpoints when those are all at the same iteration short of the end, and otherwise
start over (with a message saying why; the unfinished run's files move into `replaced_<time>/`
inside its directory). Seeds added later (a larger `--seeds`) train on their own next to the
finished ones; a seed's metrics do not depend on which seeds train beside it.

On the wall-clock axis, a setting's seeds share one program and run one after another within
each chunk: its `wall_s` is the time of all of them together (compilation included), so compare
wall-clock curves between settings trained with the same number of seeds.
"""

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.figure import Figure

import nfn_rl
from nfn_rl.run import read_header

Preset = Literal["smoke", "cpu", "paper"]
Metric = Literal["eval_return", "return_mean"]
METRIC_LABELS = {
    # EPVF's unperturbed policy and the baselines' mode are both the deterministic policy.
    "eval_return": "return of the deterministic policy",
    "return_mean": "mean return of the training episodes",
}


@dataclasses.dataclass(frozen=True)
class StudyArgs:
    """The flags every study script takes (each adds its own and its default `out`).

    Attributes:
        preset: "paper" (the paper's scale, GPU), "cpu" (CPU-sized episodes and iterations) or
            "smoke" (a quick check that everything runs).
        seeds: seeds 0 .. seeds-1 per setting, trained in one compiled program.
        settings: run and plot only these settings; empty = all.
        iterations: iterations per run; None = the preset's.
        metric: the plotted metric: "eval_return" (unperturbed policy) or "return_mean" (mean of
            the perturbed policies, the data).
        plot_only: don't train, only plot what OUT holds.
        progress: show a progress bar per setting.
        out: output folder.
    """

    preset: Preset = "paper"
    seeds: int = 3
    settings: tuple[str, ...] = ()
    iterations: int | None = None
    metric: Metric = "eval_return"
    plot_only: bool = False
    progress: bool = True
    out: Path = Path("runs/study")


def preset_overrides(args: StudyArgs, *names: str) -> dict[str, object]:
    """The flags among `names` (config fields) that were given, i.e. are not None."""
    return {name: value for name in names if (value := getattr(args, name)) is not None}


def select(settings: dict[str, object], chosen: Sequence[str]) -> dict[str, object]:
    """The entries of `settings` named in `chosen` (all if empty), in `settings`' order."""
    unknown = sorted(set(chosen) - set(settings))
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(settings)}")
    return {k: v for k, v in settings.items() if not chosen or k in chosen}


def seed_dir(out: Path, setting: str, seed: int) -> Path:
    """The run directory of one seed of one setting."""
    return out / setting / f"seed_{seed}"


def _check_config(path: Path, config: nfn_rl.EPVFConfig) -> bool:
    """Whether `path` holds (part of) a run; raises if it is a run of another config, since
    resuming or overwriting it would mix two studies in one folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    try:
        stored = nfn_rl.config_from_dict(json.loads(config_file.read_text()))
    except ValueError as error:
        raise SystemExit(
            f"{path} holds a run this version of nfn_rl cannot read ({error}); choose another "
            "--out or remove it"
        ) from None
    if stored != config:
        raise SystemExit(
            f"{path} holds a run of another config; choose another --out or remove it.\n"
            f"  stored: {stored}\n  wanted: {config}"
        )
    return True


def is_complete(path: Path, config: nfn_rl.EPVFConfig) -> bool:
    """Whether `path` holds a finished run of exactly `config` (raises for another config)."""
    if not _check_config(path, config):
        return False
    rows = nfn_rl.read_metrics(path / "metrics.csv", drop_incomplete=True)
    return len(rows) == config.iterations and rows[-1]["iteration"] == config.iterations - 1


def _checkpoint_iteration(path: Path, config: nfn_rl.EPVFConfig, seed: int) -> int | None:
    """The iteration of `path`'s checkpoint if it is one of `config` and `seed`, else None."""
    checkpoint = path / "checkpoint.eqx"
    if not checkpoint.is_file():
        return None
    try:
        header = read_header(checkpoint)
        if header["seed"] != seed or nfn_rl.config_from_dict(header["config"]) != config:
            return None
    except (ValueError, KeyError):
        return None
    return header["iteration"]


def plan_setting(
    out: Path, setting: str, config: nfn_rl.EPVFConfig, seeds: Sequence[int]
) -> tuple[list[int], bool, str]:
    """What training `setting` still needs: the seeds to train, whether they resume from their
    checkpoints, and a line saying so (empty seeds: every seed is complete)."""
    todo = [s for s in seeds if not is_complete(seed_dir(out, setting, s), config)]
    if not todo:
        return [], False, "complete, skipped"
    names = ", ".join(map(str, todo))
    started = [s for s in todo if _check_config(seed_dir(out, setting, s), config)]
    at = {s: _checkpoint_iteration(seed_dir(out, setting, s), config, s) for s in todo}
    iterations = set(at.values())
    if len(iterations) == 1 and None not in iterations:
        done = iterations.pop()
        if done < config.iterations:
            return todo, True, f"seed(s) {names}: resuming from iteration {done}"
    if not started:
        return todo, False, f"seed(s) {names}: training"
    where = ", ".join(
        f"seed {s}: {'no usable checkpoint' if i is None else f'checkpoint at iteration {i}'}"
        for s, i in at.items()
    )
    message = (
        f"seed(s) {names}: starting over from iteration 0, since their checkpoints are not all "
        f"at one iteration short of the end ({where})"
    )
    return todo, False, message


def train_setting(
    out: Path,
    setting: str,
    config: nfn_rl.EPVFConfig,
    seeds: Sequence[int],
    *,
    progress: bool = True,
) -> None:
    """Train what `setting` still needs (`plan_setting`) in one `nfn_rl.train_seeds` call."""
    todo, resume, message = plan_setting(out, setting, config, seeds)
    print(f"{setting}: {message}", flush=True)
    if not todo:
        return
    dirs = [seed_dir(out, setting, s) for s in todo]
    # One seed trains into its run directory itself, several into OUT/<setting>/seed_<k>.
    target = dirs[0] if len(todo) == 1 else out / setting
    assert nfn_rl.run.run_dirs(target, todo) == dirs
    start = time.perf_counter()
    if resume:
        try:
            nfn_rl.train_seeds(config, seeds=todo, out_dir=target, resume=True, progress=progress)
        except ValueError as error:
            # A corrupt checkpoint, or lost rows that a replay cannot rebuild: refused before
            # anything is written.
            print(f"{setting}: cannot resume ({error}); starting over from iteration 0", flush=True)
            resume = False
    if not resume:
        # `overwrite` moves an unfinished run's files into `replaced_<time>/` in its directory.
        nfn_rl.train_seeds(config, seeds=todo, out_dir=target, overwrite=True, progress=progress)
    seconds = time.perf_counter() - start
    for seed, d in zip(todo, dirs, strict=True):
        rows = nfn_rl.read_metrics(d / "metrics.csv")
        evals = [r["eval_return"] for r in rows if not math.isnan(r["eval_return"])]
        final = f"{evals[-1]:.4g}" if evals else "-"
        print(
            f"{setting} seed {seed}: {rows[-1]['env_steps']} env steps, final eval_return {final}",
            flush=True,
        )
    print(f"{setting}: {len(todo)} seed(s) in {seconds:.0f} s", flush=True)


def run_study(
    configs: dict[str, nfn_rl.EPVFConfig], seeds: int, out: Path, *, progress: bool = True
) -> None:
    """Train every setting's config for seeds 0 .. seeds-1 into `out`, one program a setting."""
    for setting, config in configs.items():
        if (out / setting / "seed0").is_dir():
            print(
                f"{setting}: {out / setting}/seed<k> is an older study's layout and is ignored; "
                "this one uses seed_<k>",
                flush=True,
            )
        # As its runs record it: with the simulator that "auto" chooses on this machine.
        config = nfn_rl.make_trainer(config).config
        train_setting(out, setting, config, range(seeds), progress=progress)


def load_curves(runs: Sequence[Path], metric: Metric) -> list[tuple[np.ndarray, ...]]:
    """Per run directory (env_steps, wall_s, metric) at the iterations where `metric` was
    recorded; runs with no such row yet are left out."""
    curves = []
    for run in runs:
        rows = nfn_rl.read_metrics(run / "metrics.csv", drop_incomplete=True)
        rows = [r for r in rows if not math.isnan(r[metric])]
        if rows:
            columns = ("env_steps", "wall_s", metric)
            curves.append(tuple(np.array([r[c] for r in rows], float) for c in columns))
    return curves


def plot_groups(
    groups: dict[str, Sequence[Path]],
    path: Path,
    *,
    title: str,
    metric: Metric = "eval_return",
    max_return: float | None = None,
    dashed: Sequence[str] = (),
) -> Path:
    """One figure at `path`: `metric` against environment steps and against wall-clock time,
    per group of run directories (the seeds of one setting) the mean with a min-max band.

    Seeds are interpolated onto a common grid (their episodes end at different steps), which
    spans only the range every seed covers. Groups named in `dashed` are drawn dashed.
    """
    # A bare `Figure` draws with the Agg canvas and leaves pyplot's global state alone.
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for label, runs in groups.items():
        curves = load_curves(runs, metric)
        if not curves:
            print(f"{label}: no {metric} recorded yet, left out of the figure")
            continue
        color = None
        for ax, column in zip(axes, (0, 1), strict=True):
            lo = max(c[column][0] for c in curves)
            hi = min(c[column][-1] for c in curves)
            grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
            values = np.stack([np.interp(grid, c[column], c[2]) for c in curves])
            shown = label + (f" ({len(curves)} seeds)" if len(curves) != len(runs) else "")
            style = "--" if label in dashed else "-"
            (line,) = ax.plot(grid, values.mean(0), style, color=color, label=shown)
            color = line.get_color()
            if grid.size == 1:
                ax.plot(grid, values.mean(0), "o", color=color)
            ax.fill_between(grid, values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
    if max_return is not None:
        for ax in axes:
            ax.axhline(max_return, color="gray", ls=":", lw=1)
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall-clock time [s] (all seeds of a run, compilation included)")
    axes[0].set_ylabel(METRIC_LABELS[metric])
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: mean over seeds, min-max band")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    print(f"saved {path}")
    return path


def run_and_plot(
    grid: dict[str, nfn_rl.EPVFConfig],
    args,
    *,
    name: str,
    title: str,
    labels: dict[str, str] | None = None,
) -> Path:
    """The body of every study script: keep the `--settings` chosen from `grid`, train what is
    missing (unless `--plot-only`), and draw the study's figure."""
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    chosen = select(grid, args.settings)
    if not args.plot_only:
        run_study(chosen, args.seeds, args.out, progress=args.progress)
    any_config = next(iter(chosen.values()))
    groups = {
        (labels or {}).get(setting, setting): [
            seed_dir(args.out, setting, seed) for seed in range(args.seeds)
        ]
        for setting in chosen
    }
    return plot_groups(
        groups,
        args.out / f"{name}.png",
        title=f"{title} ({args.seeds} seed(s))",
        metric=args.metric,
        max_return=nfn_rl.make_env(any_config.env, any_config.horizon).max_return,
    )
