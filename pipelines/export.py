"""Stage ``export``: the two trained stage models as one scorer set (``data/scorers/{global,local}``) and
``reports/ensemble.json``: :func:`rewardkit.train.export.export_scorers`, what ``rewardkit export`` runs."""

from __future__ import annotations

from pipelines._common import MODELS_DIR, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step
from rewardkit.config import from_dict
from rewardkit.train import EnsembleConfig
from rewardkit.train.export import export_scorers


def main() -> None:
    chdir_root()
    p = params("export")
    ensemble = from_dict(EnsembleConfig, p.get("ensemble") or {}, key="export.ensemble")
    with step("export"):
        export_scorers({stage: MODELS_DIR / stage for stage in ("global", "local")}, SCORERS_DIR, name=p["name"],
                       ensemble=ensemble, report=REPORTS_DIR / "ensemble.json")


if __name__ == "__main__":
    main()
