"""Shared pieces of the Ant studies (paper Figure 2): run a grid of (setting, seed) trainings into
one folder, resumably, and plot them as one figure.

Layout: `OUT/<setting>/seed<k>/` holds one `nfn_rl.train` run (config.json, metrics.csv,
checkpoint.eqx, returns.png); the figure goes to `OUT/<name>.png`. A run whose metrics.csv already
has all its iterations is skipped; one cut short resumes from its checkpoint, so rerunning the
same command continues a study.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import matplotlib
import numpy as np

import nfn_rl
from nfn_rl._report import read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Preset = Literal["smoke", "cpu", "paper"]
Metric = Literal["eval_return", "return_mean"]
METRIC_LABELS = {
    # EPVF's unperturbed policy and the baselines' mode are both the deterministic policy.
    "eval_return": "return of the deterministic policy",
    "return_mean": "mean return of the training episodes",
}


def enable_compile_cache() -> None:
    """Use the persistent XLA compilation cache: seeds of a setting then compile once."""
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/nfn/jax")),
    )


def select(settings: dict[str, object], chosen: Sequence[str]) -> dict[str, object]:
    """The entries of `settings` named in `chosen` (all if empty), in `settings`' order."""
    unknown = sorted(set(chosen) - set(settings))
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(settings)}")
    return {k: v for k, v in settings.items() if not chosen or k in chosen}


def run_dir(out: Path, setting: str, seed: int) -> Path:
    return out / setting / f"seed{seed}"


def is_complete(path: Path, config: nfn_rl.EPVFConfig) -> bool:
    """Whether `path` holds a finished run of exactly `config`.

    Raises if it holds (part of) a run of another config: resuming or overwriting it would mix
    two studies in one folder.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    stored = nfn_rl.EPVFConfig.from_json(config_file.read_text())
    if stored != config:
        raise SystemExit(
            f"{path} holds a run of another config; choose another --out or remove it.\n"
            f"  stored: {stored}\n  wanted: {config}"
        )
    rows = read_metrics(path / "metrics.csv", drop_incomplete=True)
    return len(rows) == config.iterations and rows[-1]["iteration"] == config.iterations - 1


def run_study(
    configs: dict[str, nfn_rl.EPVFConfig], seeds: int, out: Path, *, progress: bool = True
) -> None:
    """Train every setting's config (its `seed` replaced by 0 .. seeds-1) into `out`."""
    for setting, base in configs.items():
        for seed in range(seeds):
            config = dataclasses.replace(base, seed=seed)
            path = run_dir(out, setting, seed)
            if is_complete(path, config):
                print(f"{setting} seed {seed}: complete, skipped ({path})", flush=True)
                continue
            resume = _resumable(path / "checkpoint.eqx", config)
            start = time.perf_counter()
            nfn_rl.train(config, out_dir=path, resume=resume, progress=progress)
            rows = read_metrics(path / "metrics.csv")
            evals = [r["eval_return"] for r in rows if not math.isnan(r["eval_return"])]
            final = f"{evals[-1]:.1f}" if evals else "-"
            print(
                f"{setting} seed {seed}: {'resumed, ' if resume else ''}"
                f"{time.perf_counter() - start:.0f} s, {rows[-1]['env_steps']} env steps, "
                f"final eval_return {final}",
                flush=True,
            )


def _resumable(checkpoint: Path, config: nfn_rl.EPVFConfig) -> bool:
    """Whether a checkpoint exists short of the end (one at the end with lost metrics rows
    cannot restore them: that run starts over)."""
    if not checkpoint.is_file():
        return False
    with checkpoint.open("rb") as f:
        header = json.loads(f.readline())
    return header.get("iteration", config.iterations) < config.iterations


def load_curves(runs: Sequence[Path], metric: Metric) -> list[tuple[np.ndarray, ...]]:
    """Per run directory (env_steps, wall_s, metric) at the iterations where `metric` was
    recorded; runs with no such row yet are left out."""
    curves = []
    for run in runs:
        rows = read_metrics(run / "metrics.csv", drop_incomplete=True)
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, runs in groups.items():
        curves = load_curves(runs, metric)
        if not curves:
            print(f"{label}: no {metric} recorded yet, left out of the figure")
            continue
        color = None
        for ax, column in zip(axes, (0, 1)):
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
    axes[1].set_xlabel("wall-clock time [s] (compilation included)")
    axes[0].set_ylabel(METRIC_LABELS[metric])
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: mean over seeds, min-max band")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
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
    chosen = select(grid, args.settings)
    if not args.plot_only:
        run_study(chosen, args.seeds, args.out, progress=args.progress)
    any_config = next(iter(chosen.values()))
    groups = {
        (labels or {}).get(setting, setting): [
            run_dir(args.out, setting, seed) for seed in range(args.seeds)
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
