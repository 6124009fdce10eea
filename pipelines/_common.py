"""What every stage shares: where params.yaml and the data live, and how a stage reads its params."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = Path(os.environ.get("REWARDKIT_PARAMS", ROOT / "params.yaml"))

# Paths of the stage outputs (dvc.yaml names the same ones).
CANDIDATES_DIR = Path("data/candidates")  # generate: items.parquet, candidates.parquet (+ meshes/*.glb of the demo)
GENERATED_ITEMS = CANDIDATES_DIR / "items.parquet"  # generate: items without renders
CANDIDATES = CANDIDATES_DIR / "candidates.parquet"  # generate: split, degradation (when known) per item
RENDERS_DIR = Path("data/renders")  # render: one render folder per item
ITEMS = Path("data/items.parquet")  # render: items with render_dir filled
PAIRS = Path("data/pairs.parquet")  # pairs
PROBES = Path("data/probes.parquet")  # pairs: pair_id, differs_in (texture | geometry), for disentanglement
PREFERENCES = Path("data/preferences.parquet")  # label
MODELS_DIR = Path("data/models")  # train_global, train_local: <stage>/
SCORERS_DIR = Path("data/scorers")  # export: <stage>/
REPORTS_DIR = Path("reports")  # evaluate: metrics.json, plots/


def params(section: str | None = None) -> Any:
    """The whole of params.yaml, or one section of it."""
    with open(PARAMS_FILE) as fh:
        data = yaml.safe_load(fh) or {}
    if section is None:
        return data
    if section not in data:
        raise SystemExit(f"{PARAMS_FILE}: no '{section}' section")
    return data[section]


def chdir_root() -> None:
    """Stages run from the repository root (DVC does that too), so relative paths mean the same."""
    os.chdir(ROOT)


class step:
    """``with step("render"):`` prints a start line and the elapsed time, so `dvc repro` shows progress."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "step":
        self.t0 = time.perf_counter()
        print(f"[{self.name}] start", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        dt = time.perf_counter() - self.t0
        status = "failed" if exc[0] is not None else "done"
        print(f"[{self.name}] {status} in {dt:.1f}s", flush=True)
        sys.stdout.flush()
