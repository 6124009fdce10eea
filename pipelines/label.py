"""Stage ``label``: the preferences table.

``preferences.source: synthetic`` (the demo) labels every pair with a rule-based stand-in annotator (rows
carry ``source=synthetic``; they stand in for human labels). ``preferences.rules`` says which:
``degradations`` answers from the degradations the demo generator recorded (``rewardkit.demo``),
``anchors`` from the meshes' anchor rewards (``rewardkit.rl.annotator``: the shape anchor for the global
question, the detail anchors for the local one; the loop's next round on the policy's samples, which record
no degradations), ``auto`` the first where every paired candidate has recorded degradations, else the second.
``preferences.source: labelstudio`` pulls the annotations of the Label Studio project instead, through
``rewardkit.annotation`` (the server must be reachable; credentials come from the environment).
"""

from __future__ import annotations

from pipelines._common import CANDIDATES, GENERATED_ITEMS, PAIRS, PREFERENCES, chdir_root, params, step
from rewardkit.config import ConfigError, from_dict
from rewardkit.data import read_candidates, read_items, read_pairs, write_table
from rewardkit.rl.annotator import AnchorRules, stand_in_preferences


def _synthetic(p: dict):
    try:
        anchors = from_dict(AnchorRules, p.get("anchors") or {}, key="preferences.anchors")
        return stand_in_preferences(read_pairs(PAIRS), read_candidates(CANDIDATES), read_items(GENERATED_ITEMS),
                                    rules=p.get("rules", "auto"), anchors=anchors, noise=float(p.get("noise", 0.0)),
                                    seed=int(p.get("seed", 0)))
    except ConfigError as exc:
        raise SystemExit(f"label: params.yaml {exc}") from None


def _labelstudio(p: dict):
    try:
        from rewardkit.annotation import AnnotationError, pull_preferences
    except ImportError as exc:  # pragma: no cover - depends on the annotation package being installed
        raise SystemExit(f"preferences.source=labelstudio needs rewardkit.annotation: {exc}") from exc
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
