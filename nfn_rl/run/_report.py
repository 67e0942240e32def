"""The files a training run leaves behind: `metrics.csv` and `returns.png`."""

import csv
import math
from pathlib import Path

from nfn_rl.run._files import replace_file

METRIC_COLUMNS = (
    "run_id",
    "iteration",
    "env_steps",
    "wall_s",
    "return_mean",
    "return_max",
    "eval_return",
    "evaluated",
    "critic_loss",
    "critic_r2_unseen",
    "critic_spearman_unseen",
    "critic_es_cosine",
    "policy_lr",
    "nonfinite_returns",
    "skipped_updates",
)
"""The columns of `metrics.csv`. `run_id` names the run a row belongs to; `evaluated` is 1 on
the iterations with an evaluation (whose `eval_return` may still be NaN: a non-finite
evaluation), 0 elsewhere."""
CRITIC_QUALITY_COLUMNS = ("critic_r2_unseen", "critic_spearman_unseen", "critic_es_cosine")
"""The columns of a critic of policies' quality (`nfn_rl.run.CRITIC_QUALITY_METRICS`): NaN for
methods without one."""
_INT_COLUMNS = {"iteration", "env_steps", "evaluated", "nonfinite_returns", "skipped_updates"}
_STR_COLUMNS = {"run_id"}


def append_metrics(path: Path, rows: list[dict], *, fresh: bool = False) -> None:
    """Append rows (dicts keyed by `METRIC_COLUMNS`); `fresh` starts a new file with a header.

    Atomic and durable (`replace_file`): the whole file is written anew beside `path`, then
    renamed over it, so a reader (or a kill, or a power loss) sees the old rows or all the new
    ones.
    """
    previous = "" if fresh or not path.is_file() else path.read_text()

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            f.write(previous)
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if fresh:
                writer.writeheader()
            writer.writerows(rows)

    replace_file(path, write)


def _parse(row: dict) -> dict:
    parsed = {}
    for key, value in row.items():
        if key is None or value is None:
            raise ValueError("a row with missing or extra fields")
        if key in _STR_COLUMNS:
            parsed[key] = value
        elif key in _INT_COLUMNS:
            parsed[key] = int(value)
        else:
            parsed[key] = float(value)
    return parsed


def read_metrics(path: Path, *, drop_incomplete: bool = False) -> list[dict]:
    """The rows of a `metrics.csv`, with integer and float columns parsed.

    With `drop_incomplete`, rows that do not parse, and a last line without its newline (a
    write cut short by a kill, which may still parse), are left out instead of raising.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if drop_incomplete and lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    rows = []
    for row in csv.DictReader(lines):
        try:
            rows.append(_parse(row))
        except (TypeError, ValueError) as error:
            if not drop_incomplete:
                raise ValueError(f"{path}: unreadable row {row}: {error}") from error
    return rows


def plot_returns(rows: list[dict], path: Path) -> None:
    """Returns against environment steps and against wall-clock time, saved to `path`; runs
    whose critic reads policies (EPVF) get a third panel with its quality metrics."""
    # Imported here: matplotlib takes a second to import and only the end of a run needs it. A
    # bare `Figure` draws with the Agg canvas without touching pyplot's global backend, so a
    # notebook that trains keeps its inline plots.
    from matplotlib.figure import Figure

    quality = [
        name for name in CRITIC_QUALITY_COLUMNS if any(_finite(r.get(name, math.nan)) for r in rows)
    ]
    fig = Figure(figsize=(15 if quality else 10, 4))
    axes = fig.subplots(1, 3 if quality else 2)
    for ax, x_name, label in zip(
        axes, ("env_steps", "wall_s"), ("environment steps", "wall-clock time [s]"), strict=False
    ):
        x = [r[x_name] for r in rows]
        ax.plot(x, [r["return_mean"] for r in rows], lw=1, label="training episodes (mean)")
        evals = [(r[x_name], r["eval_return"]) for r in rows if not math.isnan(r["eval_return"])]
        if evals:
            ax.plot(*zip(*evals, strict=True), lw=1.5, label="trained policy (eval)")
        ax.set_xlabel(label)
        ax.set_ylabel("undiscounted return")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if quality:
        ax = axes[2]
        x = [r["env_steps"] for r in rows]
        for name in quality:
            ax.plot(x, [r[name] for r in rows], lw=1, label=name)
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("critic quality")
        ax.set_ylim(-0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    # Written beside `path`, then renamed over it: a reader never sees half a picture.
    replace_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)
