"""Stage ``export``: the two trained stage models as one scorer set (``data/scorers/{global,local}``).

Each scorer carries the camera protocol and render settings its model was trained on (read from the
render folders' metadata), the training-data summary and the validation metrics.
"""

from __future__ import annotations

import json
import shutil

from pipelines._common import ITEMS, MODELS_DIR, SCORERS_DIR, chdir_root, params, step


def main() -> None:
    chdir_root()
    p = params("export")
    from rewardkit.data.tables import read_items
    from rewardkit.models import StageRewardModel
    from rewardkit.render import read_meta
    from rewardkit.scoring import Scorer, ScorerSet

    items = read_items(ITEMS)
    meta = read_meta(items["render_dir"][0])  # every item was rendered with the same protocol and config
    scorers = {}
    with step("export"):
        for stage in ("global", "local"):
            run = MODELS_DIR / stage
            metrics = json.loads((run / "metrics.json").read_text())
            model = StageRewardModel.from_pretrained(run / "model")
            scorers[stage] = Scorer(
                model, camera=meta["protocol"], render_config=meta["render_config"], name=f"{p['name']}-{stage}",
                training_data=metrics.get("data") or {},
                metrics={k: metrics.get(k) for k in ("val", "test", "disentanglement") if metrics.get(k) is not None},
            )
        if SCORERS_DIR.exists():
            shutil.rmtree(SCORERS_DIR)
        ScorerSet(global_scorer=scorers["global"], local_scorer=scorers["local"]).save_pretrained(SCORERS_DIR)
        print(f"  scorer set in {SCORERS_DIR}/ (global: {scorers['global'].modes}, local: {scorers['local'].modes})")


if __name__ == "__main__":
    main()
