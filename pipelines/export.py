"""Stage ``export``: the two trained stage models as one scorer set (``data/scorers/{global,local}``).

Each scorer carries the camera protocol and render settings its model was trained on (read from the
render folders' metadata), the training-data summary and the validation metrics.

With ``export.ensemble.members`` > 1 each stage is exported as an ensemble scorer (kind ``stage-ensemble``):
the trained model plus ``members - 1`` reward heads fitted on bootstrap resamples of its training
preferences on its frozen towers (:mod:`rewardkit.train.ensemble`, seconds per stage); its scores are the
members' mean and it reports their std (``reports/ensemble.json``: members' and ensemble's validation
accuracy, time).
"""

from __future__ import annotations

import json
import shutil

from pipelines._common import ITEMS, MODELS_DIR, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step


def main() -> None:
    chdir_root()
    p = params("export")
    from rewardkit.data.tables import read_items
    from rewardkit.models import StageRewardModel
    from rewardkit.render import read_meta
    from rewardkit.scoring import EnsembleScorer, Scorer, ScorerSet
    from rewardkit.train.ensemble import EnsembleConfig, train_ensemble

    items = read_items(ITEMS)
    meta = read_meta(items["render_dir"][0])  # every item was rendered with the same protocol and config
    ecfg = EnsembleConfig(**(p.get("ensemble") or {}))
    scorers, ensembles = {}, {}
    with step("export"):
        for stage in ("global", "local"):
            run = MODELS_DIR / stage
            metrics = json.loads((run / "metrics.json").read_text())
            model = StageRewardModel.from_pretrained(run / "model")
            kw = dict(camera=meta["protocol"], render_config=meta["render_config"], name=f"{p['name']}-{stage}",
                      training_data=metrics.get("data") or {},
                      metrics={k: metrics.get(k) for k in ("val", "test", "disentanglement") if metrics.get(k) is not None})
            if ecfg.members > 1:
                train_config = json.loads((run / "train_config.json").read_text())
                ensemble, report = train_ensemble(model, train_config, ecfg)
                ensembles[stage] = report
                kw["metrics"]["ensemble"] = report
                scorers[stage] = EnsembleScorer(ensemble, **kw)
                print(f"  {stage}: {ensemble.members} members in {report['seconds']:.1f} s, validation accuracy "
                      f"members {[round(a, 3) for a in report.get('val_member_accuracy', [])]}, "
                      f"ensemble {report.get('val_ensemble_accuracy', float('nan')):.3f}")
            else:
                scorers[stage] = Scorer(model, **kw)
        if SCORERS_DIR.exists():
            shutil.rmtree(SCORERS_DIR)
        ScorerSet(global_scorer=scorers["global"], local_scorer=scorers["local"]).save_pretrained(SCORERS_DIR)
        REPORTS_DIR.mkdir(parents=True, exist_ok=True)
        (REPORTS_DIR / "ensemble.json").write_text(json.dumps({"members": ecfg.members, **ensembles}, indent=2) + "\n")
        print(f"  scorer set in {SCORERS_DIR}/ (global: {scorers['global'].modes}, local: {scorers['local'].modes})")


if __name__ == "__main__":
    main()
