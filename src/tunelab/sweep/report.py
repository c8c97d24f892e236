"""A sweep's report: the table of trials (results.csv / results.json), best.json, two plots and report.html.

``objective.png`` shows each trial's objective in trial order with the best-so-far line (pruned trials at
the last value they logged, marked apart); ``importance.png`` shows the parameter importances of Optuna's
default evaluator (`optuna.importance.get_param_importances`: how much each searched key explains of the
objective; normalized to sum to 1), once two trials have finished.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from tunelab.sweep.space import Param
from tunelab.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def trial_rows(study, space: dict[str, Param]) -> list[dict]:
    """One row per trial: number, state, objective, pruning step, seconds, sampled values, run folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     "last_reported": last, "pruned_at_step": t.user_attrs.get("pruned_at_step"),
                     "seconds": t.user_attrs.get("seconds"), **{k: t.params.get(k) for k in space},
                     "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
                     "restart_of": t.user_attrs.get("restart_of")})
    return rows


def importances(study) -> dict[str, float] | None:
    """Optuna's importance per searched key, or None before two trials with different values have finished."""
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None
    try:
        return dict(get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. every finished trial drew the same values
        return None


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _objective_plot(rows: list[dict], metric: str, direction: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    done = [(r["trial"], r["value"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [(r["trial"], r["last_reported"]) for r in rows
              if r["state"] == "PRUNED" and r["last_reported"] is not None]
    if done:
        ax.scatter(*zip(*done), label="finished", color="tab:blue")
        best, line = None, []
        for n, v in done:
            best = v if best is None or (v < best if direction == "minimize" else v > best) else best
            line.append((n, best))
        ax.step(*zip(*line), where="post", color="tab:green", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="tab:red", label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial ({direction})")
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def _importance_plot(imp: dict[str, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(keys)))
    ax.barh(keys, [imp[k] for k in keys], color="tab:purple")
    ax.set_xlabel("importance (Optuna's default evaluator, sums to 1)")
    ax.set_xlim(0, 1)
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(folder: Path, study, space: dict[str, Param], metric: str) -> Path:
    """Write results.csv/json, best.json, objective.png, importance.png (when known) and report.html."""
    folder = Path(folder)
    direction = study.direction.name.lower()
    rows = trial_rows(study, space)
    with io.StringIO() as buf:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(folder / "results.csv", buf.getvalue())
    atomic_write_json(folder / "results.json", rows)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = (min if direction == "minimize" else max)(done, key=lambda r: r["value"]) if done else None
    imp = importances(study)
    atomic_write_json(folder / "best.json", {"metric": metric, "direction": direction, "best": best,
                                             "importance": imp})
    objective = _objective_plot(rows, metric, direction)
    atomic_write_bytes(folder / "objective.png", objective)
    images = [("objective per trial", objective)]
    if imp:
        importance = _importance_plot(imp)
        atomic_write_bytes(folder / "importance.png", importance)
        images.append(("parameter importance", importance))
    keys = list(space)
    head = ["trial", "state", metric, *keys, "pruned at step", "seconds", "run folder"]
    body = []
    for r in rows:
        value = r["value"] if r["value"] is not None else r["last_reported"]
        cells = [r["trial"], r["state"].lower(), "" if value is None else f"{value:.5g}",
                 *[_fmt(r[k]) for k in keys], r["pruned_at_step"] or "", r["seconds"] or "", r["run_dir"] or ""]
        style = ' style="font-weight:bold"' if best is not None and r["trial"] == best["trial"] else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    figures = "".join(f'<h2>{html.escape(title)}</h2><img src="data:image/png;base64,'
                      f'{base64.b64encode(png).decode()}" alt="{html.escape(title)}">' for title, png in images)
    summary = (f"best: trial {best['trial']}, {metric} {best['value']:.5g} ({html.escape(str(best['run_dir']))})"
               if best else "no finished trial yet")
    page = (f"<!doctype html><meta charset='utf-8'><title>sweep {html.escape(folder.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
            f"</style><h1>sweep {html.escape(folder.name)}</h1><p>{len(rows)} trials, {direction} {metric}; "
            f"{summary}</p><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>"
            f"{''.join(body)}</table>{figures}")
    return atomic_write_text(folder / "report.html", page)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))
