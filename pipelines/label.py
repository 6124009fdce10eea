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


RULES = ("auto", "degradations", "anchors")


def _synthetic(p: dict):
    from rewardkit.data.candidates import read_candidates
    from rewardkit.data.tables import read_items, read_pairs
    from rewardkit.demo import UnrecordedDegradation, label_pairs

    rules = p.get("rules", "auto")
    if rules not in RULES:
        raise SystemExit(f"params.yaml: preferences.rules must be one of {RULES}, not {rules!r}")
    noise, seed = float(p.get("noise", 0.0)), int(p.get("seed", 0))
    pairs = read_pairs(PAIRS)
    if rules != "anchors":
        try:
            prefs = label_pairs(pairs, read_candidates(CANDIDATES), noise=noise, seed=seed)
            print("  rules: degradations (rewardkit.demo)")
            return prefs
        except UnrecordedDegradation as exc:  # a lab's own generations, or the policy's samples
            if rules == "degradations":
                raise SystemExit(f"label: preferences.rules is 'degradations', but {exc}. Set preferences.rules: "
                                 "anchors (demo prompts), collect human labels (preferences.source: labelstudio) "
                                 "or record both degradation columns in candidates.csv") from None
            print("  rules: anchors (the paired candidates record no degradations)")
    from rewardkit.config import from_dict
    from rewardkit.rl.annotator import AnchorError, AnchorRules, label_pairs_by_anchors

    try:
        anchors = from_dict(AnchorRules, p.get("anchors") or {}, key="preferences.anchors")
    except ValueError as exc:
        raise SystemExit(f"params.yaml: {exc}") from None
    try:
        return label_pairs_by_anchors(pairs, read_items(GENERATED_ITEMS), anchors, noise=noise, seed=seed)
    except (AnchorError, KeyError, ValueError) as exc:
        raise SystemExit(f"label: the anchor rules cannot label these pairs: {exc}. Collect human labels "
                         "(preferences.source: labelstudio)") from None


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
