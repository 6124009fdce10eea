"""Trained stage models -> one scorer set (``rewardkit export``, the pipeline's ``export`` stage).

A training run's folder (``rewardkit train --out RUN``) holds ``model/``, ``metrics.json`` and
``train_config.json``. Each exported scorer carries the camera protocol and render settings its model was
trained on (read from the metadata of the first render folder of the run's items table, or of
``render_dir``), the training-data summary and the validation metrics.

With ``ensemble.members`` > 1 each stage is exported as an ensemble scorer (kind ``stage-ensemble``): the
trained model plus ``members - 1`` reward heads fitted on bootstrap resamples of its training preferences on
its frozen towers (:mod:`rewardkit.train.ensemble`, seconds per stage); its scores are the members' mean and
it reports their std.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardkit.data.tables import read_items
from rewardkit.errors import RewardkitError
from rewardkit.models import StageRewardModel
from rewardkit.render import read_meta
from rewardkit.scoring import EnsembleScorer, Scorer, ScorerSet
from rewardkit.train.data import resolve_render_dir
from rewardkit.train.ensemble import EnsembleConfig, train_ensemble

STAGES = ("global", "local")


class ExportError(RewardkitError, FileNotFoundError):
    """A training run folder lacks what export needs (names the file)."""


@dataclass
class ExportResult:
    out_dir: Path
    scorers: ScorerSet
    ensembles: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> train_ensemble's report


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ExportError(f"{path}: missing (is {path.parent} a `rewardkit train` output folder?)")
    return json.loads(path.read_text())


def run_render_meta(run: Path, train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The render metadata of the first item the run was trained on (every item shares protocol and config)."""
    items_path = Path(train_config["items"])
    if not items_path.exists():
        raise ExportError(f"{run / 'train_config.json'}: its items table {items_path} does not exist "
                          "(run export from the folder training ran in, or pass render_dir)")
    first = read_items(items_path)["render_dir"][0]
    return read_meta(resolve_render_dir(first, train_config.get("render_root"), items_path))


def export_scorers(runs: Mapping[str, str | Path], out_dir: str | Path, *, name: str = "rewardkit",
                   ensemble: EnsembleConfig | None = None, render_dir: str | Path | None = None,
                   report: str | Path | None = None, log=print) -> ExportResult:
    """Export the training runs ``runs`` (stage -> run folder) as one scorer set in ``out_dir`` (replaced);
    ``report``: also write the ensembles' reports there (JSON: members, then per stage)."""
    ecfg = ensemble or EnsembleConfig()
    scorers, reports = {}, {}
    for stage, run in runs.items():
        run = Path(run)
        metrics = _read_json(run / "metrics.json")
        train_config = _read_json(run / "train_config.json")
        meta = read_meta(render_dir) if render_dir is not None else run_render_meta(run, train_config)
        model = StageRewardModel.from_pretrained(run / "model")
        kw = dict(camera=meta["protocol"], render_config=meta["render_config"], name=f"{name}-{stage}",
                  training_data=metrics.get("data") or {},
                  metrics={k: metrics[k] for k in ("val", "test", "disentanglement") if metrics.get(k) is not None})
        if ecfg.members > 1:
            members, rep = train_ensemble(model, train_config, ecfg)
            reports[stage] = kw["metrics"]["ensemble"] = rep
            scorers[stage] = EnsembleScorer(members, **kw)
            log(f"  {stage}: {members.members} members in {rep['seconds']:.1f} s, validation accuracy members "
                f"{[round(a, 3) for a in rep.get('val_member_accuracy', [])]}, "
                f"ensemble {rep.get('val_ensemble_accuracy', float('nan')):.3f}")
        else:
            scorers[stage] = Scorer(model, **kw)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    scorer_set = ScorerSet(scorers)
    scorer_set.save_pretrained(out_dir)
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps({"members": ecfg.members, **reports}, indent=2) + "\n")
    log(f"  scorer set in {out_dir}/ (" + ", ".join(f"{s}: {scorers[s].modes}" for s in scorers) + ")")
    return ExportResult(out_dir, scorer_set, reports)


__all__ = ["STAGES", "ExportError", "ExportResult", "export_scorers", "run_render_meta"]
