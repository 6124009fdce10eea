"""Stage ``label``: the preferences table.

``preferences.source: synthetic`` (the demo) labels every pair with the rule-based stand-in annotator of
``rewardkit.demo`` (rows carry ``source=synthetic``; they stand in for human labels).
``preferences.source: labelstudio`` pulls the annotations of the Label Studio project instead, through
``rewardkit.annotation`` (the server must be reachable; credentials come from the environment).
"""

from __future__ import annotations

from pipelines._common import CANDIDATES, PAIRS, PREFERENCES, chdir_root, params, step


def _synthetic(p: dict):
    from rewardkit.data.candidates import read_candidates
    from rewardkit.data.tables import read_pairs
    from rewardkit.demo import UnrecordedDegradation, label_pairs

    try:
        return label_pairs(read_pairs(PAIRS), read_candidates(CANDIDATES),
                           noise=float(p.get("noise", 0.0)), seed=int(p.get("seed", 0)))
    except UnrecordedDegradation as exc:  # a lab's own generations without recorded degradations
        raise SystemExit(f"label: preferences.source is 'synthetic', but {exc}. Collect human labels "
                         f"(preferences.source: labelstudio) or record both degradation columns in candidates.csv") from None


def _labelstudio(p: dict):
    try:
        from rewardkit.annotation import AnnotationError, pull_preferences
    except ImportError as exc:  # pragma: no cover - depends on the annotation package being installed
        raise SystemExit(f"preferences.source=labelstudio needs rewardkit.annotation: {exc}") from exc
    from rewardkit.data.tables import read_pairs

    ls = p.get("labelstudio") or {}
    try:
        prefs = pull_preferences(pairs=read_pairs(PAIRS), url=ls.get("url"), project=ls.get("project"))
    except AnnotationError as exc:
        raise SystemExit(f"label: {exc}") from None
    if prefs.height == 0:
        raise SystemExit(f"label: the Label Studio project {ls.get('project')!r} has no annotations of these pairs yet "
                         "(push them with `rewardkit annotate push`, annotate, then `dvc repro`)")
    return prefs


def main() -> None:
    chdir_root()
    p = params("preferences")
    from rewardkit.data.tables import write_table

    source = p.get("source", "synthetic")
    with step(f"label ({source})"):
        if source == "synthetic":
            prefs = _synthetic(p)
        elif source == "labelstudio":
            prefs = _labelstudio(p)
        else:
            raise SystemExit(f"params.yaml: preferences.source must be 'synthetic' or 'labelstudio', not {source!r}")
        write_table(prefs, PREFERENCES, "preferences")
        summary = prefs.group_by("question", "label").len().sort("question", "label")
        print(f"  {prefs.height} preferences: " + ", ".join(f"{q}/{lab}={n}" for q, lab, n in summary.iter_rows()))


if __name__ == "__main__":
    main()
