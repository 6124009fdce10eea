"""Quality control of collected preferences: a JSON report and a terminal rendering.

Per question (``global`` / ``local``):

- label distribution (counts and fractions of a / b / tie / both_bad);
- agreement between annotators on units (pair x question) with two or more answers: the share of
  agreeing annotator pairs (pairwise agreement) and Krippendorff's alpha (nominal; ``krippendorff``
  package), null when there is no overlap;
- per annotator: answers, units shared with others, agreement with the majority of the *other*
  annotators of each unit (leave-one-out; units where the others tie are left out), median lead time;
- flags: annotators whose agreement with the majority is below ``threshold`` (on at least
  ``min_overlap`` units), and annotators whose median lead time is below ``min_lead_time_s``;
- notes: e.g. that no unit has two annotators, so agreement cannot be measured (one annotator per
  task is the default of ``rewardkit annotate up``; ``--annotators-per-task 3`` asks for overlap).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import polars as pl

from rewardkit.data.tables import LABELS, QUESTIONS, conform


def _alpha(units: dict[tuple, dict[str, str]], annotators: list[str]) -> float | None:
    multi = {u: v for u, v in units.items() if len(v) >= 2}
    if not multi:
        return None
    values = [lab for v in multi.values() for lab in v.values()]
    if len(set(values)) < 2:
        return 1.0  # perfect agreement on a single category (alpha is undefined: 0/0)
    import numpy as np
    import krippendorff

    code = {lab: i for i, lab in enumerate(LABELS)}
    mat = np.full((len(annotators), len(multi)), np.nan)
    idx = {a: i for i, a in enumerate(annotators)}
    for j, v in enumerate(multi.values()):
        for a, lab in v.items():
            mat[idx[a], j] = code[lab]
    return float(krippendorff.alpha(reliability_data=mat, level_of_measurement="nominal"))


def qc_report(
    preferences: pl.DataFrame,
    *,
    threshold: float = 0.6,
    min_overlap: int = 5,
    min_lead_time_s: float | None = None,
) -> dict:
    """The QC report as a JSON-serializable dict (see module docstring)."""
    prefs = conform(preferences, "preferences")
    report: dict = {
        "n_rows": prefs.height,
        "n_pairs": prefs["pair_id"].n_unique(),
        "annotators": sorted(prefs["annotator"].unique().to_list()),
        "threshold": threshold,
        "min_overlap": min_overlap,
        "min_lead_time_s": min_lead_time_s,
        "questions": {},
        "annotator_stats": {},
        "flags": [],
        "notes": [],
    }
    per_ann: dict[str, dict] = defaultdict(lambda: {"answers": 0, "overlap_units": 0, "agree": 0, "lead_times": []})
    for q in QUESTIONS:
        sub = prefs.filter(pl.col("question") == q)
        dist = Counter(sub["label"].to_list())
        n = sub.height
        units: dict[str, dict[str, str]] = defaultdict(dict)
        for pid, ann, lab, lt in sub.select("pair_id", "annotator", "label", "lead_time_s").iter_rows():
            units[pid][ann] = lab
            per_ann[ann]["answers"] += 1
            if lt is not None:
                per_ann[ann]["lead_times"].append(lt)
        agree_pairs = total_pairs = 0
        for v in units.values():
            labs = list(v.values())
            for x, y in combinations(labs, 2):
                total_pairs += 1
                agree_pairs += x == y
            if len(v) < 2:
                continue
            for ann, lab in v.items():
                others = Counter(label for a, label in v.items() if a != ann)
                top = others.most_common()
                if len(top) > 1 and top[0][1] == top[1][1]:
                    continue  # the others tie: no majority
                per_ann[ann]["overlap_units"] += 1
                per_ann[ann]["agree"] += lab == top[0][0]
        report["questions"][q] = {
            "n": n,
            "label_counts": {lab: int(dist.get(lab, 0)) for lab in LABELS},
            "label_fractions": {lab: (dist.get(lab, 0) / n if n else None) for lab in LABELS},
            "units": len(units),
            "units_with_2plus": sum(1 for v in units.values() if len(v) >= 2),
            "pairwise_agreement": (agree_pairs / total_pairs) if total_pairs else None,
            "krippendorff_alpha": _alpha(units, report["annotators"]),
        }
    for ann in report["annotators"]:
        s = per_ann[ann]
        agreement = s["agree"] / s["overlap_units"] if s["overlap_units"] else None
        med = statistics.median(s["lead_times"]) if s["lead_times"] else None
        report["annotator_stats"][ann] = {
            "answers": s["answers"],
            "overlap_units": s["overlap_units"],
            "agreement_with_majority": agreement,
            "median_lead_time_s": med,
        }
        if agreement is not None and s["overlap_units"] >= min_overlap and agreement < threshold:
            report["flags"].append(
                {"annotator": ann, "reason": "low_agreement", "value": agreement,
                 "detail": f"agrees with the majority on {agreement:.0%} of {s['overlap_units']} shared units (< {threshold:.0%})"}
            )
        if min_lead_time_s is not None and med is not None and med < min_lead_time_s:
            report["flags"].append(
                {"annotator": ann, "reason": "fast", "value": med,
                 "detail": f"median lead time {med:.1f} s (< {min_lead_time_s:.1f} s)"}
            )
    if prefs.height and not any(q["units_with_2plus"] for q in report["questions"].values()):
        report["notes"].append(NO_OVERLAP_NOTE)
    return report


NO_OVERLAP_NOTE = (
    "no pair was answered by two or more annotators, so agreement (pairwise, Krippendorff's alpha, agreement "
    "with the majority) cannot be measured and no annotator can be flagged for it. Ask for overlap: "
    "`rewardkit annotate up --renders <folder> --annotators-per-task 3` sets the project's maximum_annotations, "
    "and Label Studio then serves each task until it has 3 answers."
)


def report_console(file=None):
    """A rich Console for reports: the terminal's width on a terminal; on a pipe or a log file, wide enough
    that tables are never cut or wrapped (rich would use 80 columns)."""
    from rich.console import Console

    console = Console(file=file)
    if console.is_terminal:
        return console
    return Console(file=file, width=1000, no_color=True, highlight=False)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{v:.0%}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def print_report(report: dict, console=None) -> None:
    """Readable tables on the terminal (rich)."""
    from rich.markup import escape
    from rich.table import Table

    console = console or report_console()
    t = Table(title=f"Preferences QC: {report['n_rows']} answers, {report['n_pairs']} pairs, {len(report['annotators'])} annotators")
    t.add_column("question")
    for lab in LABELS:
        t.add_column(lab, justify="right")
    t.add_column("units ≥2", justify="right")
    t.add_column("pairwise agr.", justify="right")
    t.add_column("Krippendorff α", justify="right")
    for q, s in report["questions"].items():
        t.add_row(
            q, *[f"{s['label_counts'][lab]} ({_fmt(s['label_fractions'][lab], True)})" for lab in LABELS],
            str(s["units_with_2plus"]), _fmt(s["pairwise_agreement"], True), _fmt(s["krippendorff_alpha"]),
        )
    console.print(t)
    flagged = {f["annotator"] for f in report["flags"]}
    a = Table(title="Annotators")
    for col in ("annotator", "answers", "shared units", "agreement w/ majority", "median lead time", "flag"):
        a.add_column(col, justify="left" if col in ("annotator", "flag") else "right")
    for ann, s in report["annotator_stats"].items():
        a.add_row(
            escape(ann), str(s["answers"]), str(s["overlap_units"]), _fmt(s["agreement_with_majority"], True),
            "-" if s["median_lead_time_s"] is None else f"{s['median_lead_time_s']:.1f} s",
            "[red]FLAG[/red]" if ann in flagged else "",
        )
    console.print(a)
    for f in report["flags"]:
        console.print(f"[red]flag[/red] {escape(f['annotator'])}: {escape(f['detail'])}")
    for n in report.get("notes", []):
        console.print(f"[yellow]note[/yellow]: {n}", soft_wrap=True, highlight=False)
