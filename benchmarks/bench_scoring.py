"""Scoring throughput: one process for many meshes versus one process per mesh, and pipeline overhead.

Exports a scorer set (global + local stage models, random init, no download) for the chosen backbone,
then on N meshes (default 32) measures:

1. ``rewardkit score m1 ... mN`` (one process: one model load, batched forwards, renders shared by both
   stages) versus N separate ``rewardkit score m_i`` processes (the reload-per-call pattern of
   ``hpsv2.score``), both as real subprocesses, and their ratio.
2. In one warm process, the per-mesh time of ``score_meshes`` versus the sum of that mesh's render time
   (load + render of the modes both stages need, once) and its model forward time (both stages), with
   forwards at batch size 1 and at the pipeline's batch size. Target: per-mesh <= 1.2 x (render + forward).

Usage::

    python benchmarks/bench_scoring.py [--n 32] [--backbone rk-small] [--render-size 224] [--camera orbit6]
        [--batch-size 8] [--meshes DIR] [--cli-runs N] [--rounds 3] [--skip-cli] [--device auto] [--json out.json]

``--meshes DIR`` cycles through the mesh files under DIR (e.g. ../shared/meshes); the default builds
coloured trimesh primitives. ``--cli-runs`` < N measures that many separate processes and extrapolates
(marked in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import torch
import trimesh

from rewardkit.io import SUPPORTED_FORMATS, load_mesh
from rewardkit.models import BackboneConfig, StageModelConfig, StageRewardModel
from rewardkit.render import Renderer
from rewardkit.scoring import Scorer, ScorerSet, ScoringTimings, load_scorer, score_meshes
from rewardkit.scoring.core import render_groups, views_to_tensor


def make_meshes(n: int, out: Path, source: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if source is not None:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUPPORTED_FORMATS and p.suffix != ".gltf")
        good = []
        for p in files:
            try:
                load_mesh(p)
                good.append(p)
            except Exception:
                pass
        return [good[i % len(good)] for i in range(n)]
    rng = np.random.default_rng(0)
    makers = [
        lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.5),
        lambda: trimesh.creation.box(extents=rng.uniform(0.3, 1.0, 3)),
        lambda: trimesh.creation.cylinder(radius=0.3, height=0.9, sections=48),
        lambda: trimesh.creation.cone(radius=0.4, height=0.9, sections=48),
        lambda: trimesh.creation.capsule(height=0.6, radius=0.3, count=[24, 24]),
        lambda: trimesh.creation.torus(major_radius=0.4, minor_radius=0.15, major_sections=48, minor_sections=24),
    ]
    paths = []
    for i in range(n):
        m = makers[i % len(makers)]()
        m.visual.face_colors = np.array([*rng.integers(20, 235, 3), 255], dtype=np.uint8)
        p = out / f"mesh_{i:02d}.glb"
        m.export(p)
        paths.append(p)
    return paths


def export_scorers(root: Path, backbone: str, camera: str, render_size: int) -> Path:
    torch.manual_seed(0)
    g = StageRewardModel(StageModelConfig(stage="global", backbone=BackboneConfig(backbone)))
    torch.manual_seed(1)
    loc = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig(backbone)))
    s = ScorerSet(global_scorer=Scorer(g, camera=camera, render_size=render_size),
                  local_scorer=Scorer(loc, camera=camera, render_size=render_size))
    return s.save_pretrained(root / "scorers")


def cli(args: list[str], device: str) -> float:
    cmd = [sys.executable, "-m", "rewardkit", "score", *args, "--device", device]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"CLI failed ({proc.returncode}): {' '.join(cmd[:8])} ...\n{proc.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--backbone", default="rk-small")
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--camera", default="orbit6")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--meshes", type=Path, default=None)
    ap.add_argument("--cli-runs", type=int, default=None, help="separate processes to time (default: --n)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds for the overhead measurement")
    ap.add_argument("--skip-cli", action="store_true", help="skip the subprocess comparison (part 1)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    cli_runs = a.n if a.cli_runs is None else max(1, min(a.cli_runs, a.n))

    tmp = Path(tempfile.mkdtemp(prefix="rk-bench-scoring-"))
    meshes = make_meshes(a.n, tmp / "meshes", a.meshes)
    scorer_dir = export_scorers(tmp, a.backbone, a.camera, a.render_size)
    prompt = "a small coloured object"
    print(f"# {a.n} meshes, backbone {a.backbone}, {a.camera} @ {a.render_size}px, device {device}, "
          f"batch {a.batch_size}, torch threads {torch.get_num_threads()}")

    # 1. one process vs one process per mesh -------------------------------------------------------
    common = ["--prompt", prompt, "--scorer", str(scorer_dir), "--batch-size", str(a.batch_size)]
    t_one = t_sep = 0.0
    if not a.skip_cli:
        t_one = cli([*map(str, meshes), *common], device)
        per_call = [cli([str(m), *common], device) for m in meshes[:cli_runs]]
        t_sep = statistics.fmean(per_call) * a.n
        note = "" if cli_runs == a.n else f" (extrapolated from {cli_runs} runs)"
        print(f"one process, {a.n} meshes:      {t_one:8.2f} s  ({t_one / a.n:.3f} s/mesh)")
        print(f"{a.n} processes, 1 mesh each:    {t_sep:8.2f} s  ({t_sep / a.n:.3f} s/mesh){note}")
        print(f"speed-up of one process:       {t_sep / t_one:8.1f} x")

    # 2. per-mesh pipeline time vs render + forward (warm, in-process) --------------------------------
    # Rounds interleave the four measurements so that a change in machine load hits all of them alike;
    # the ratios are taken within a round and the median over rounds is reported.
    scorers = load_scorer(scorer_dir, device=device)
    groups = render_groups(scorers)
    assert len(groups) == 1
    g = groups[0]
    renderer = Renderer(size=g.protocol.size, config=g.render_config)

    def render_all() -> tuple[float, list[dict[str, torch.Tensor]]]:
        t0 = time.perf_counter()
        vs = []
        for m in meshes:
            out = renderer.render(load_mesh(m), g.protocol, modes=g.modes)
            vs.append({k: views_to_tensor(out[k]) for k in g.modes})
        return (time.perf_counter() - t0) / len(meshes), vs

    def forward(batch: list[dict[str, torch.Tensor]]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _, s in scorers.items():
            s.score_views({k: torch.stack([v[k] for v in batch]) for k in s.modes}, [prompt] * len(batch))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def pipeline(prefetch: bool) -> float:
        tm = ScoringTimings()
        score_meshes(meshes, prompt, scorers, batch_size=a.batch_size, prefetch=prefetch, timings=tm)
        return tm.per_mesh()

    _, views = render_all()
    chunks = [views[i:i + a.batch_size] for i in range(0, len(views), a.batch_size)]
    for c in {len(c): c for c in chunks}.values():  # warm up every batch shape (oneDNN / cuDNN plans)
        forward(c)
    forward(views[:1])
    pipeline(True)
    pipeline(False)
    rounds = []
    for _ in range(a.rounds):
        r_mesh, views = render_all()
        f1 = statistics.median(forward([v]) for v in views[: min(8, len(views))])
        fb = sum(forward(c) for c in chunks) / len(views)
        pp, ps = pipeline(True), pipeline(False)
        rounds.append({"render": r_mesh, "f1": f1, "fb": fb, "prefetch": pp, "sequential": ps,
                       "ratio_prefetch": pp / (r_mesh + fb), "ratio_sequential": ps / (r_mesh + fb),
                       "ratio_prefetch_b1": pp / (r_mesh + f1), "ratio_sequential_b1": ps / (r_mesh + f1)})
    renderer.close()

    def med(k: str) -> float:
        return statistics.median(r[k] for r in rounds)

    def rng(k: str) -> str:
        vals = [r[k] for r in rounds]
        return f"[{min(vals):.2f}-{max(vals):.2f}]"

    print(f"medians over {a.rounds} interleaved rounds:")
    print(f"render (load + {'+'.join(g.modes)} x {g.protocol.n_views} views) per mesh: {med('render') * 1000:8.1f} ms")
    print(f"forward (both stages) per mesh, batch 1:          {med('f1') * 1000:8.1f} ms")
    print(f"forward (both stages) per mesh, batch {a.batch_size}:          {med('fb') * 1000:8.1f} ms")
    for tag in ("prefetch", "sequential"):
        print(f"score_meshes per mesh ({tag:10s}):            {med(tag) * 1000:8.1f} ms = "
              f"{med('ratio_' + tag):.2f} x (render + forward b{a.batch_size}) {rng('ratio_' + tag)}, "
              f"{med('ratio_' + tag + '_b1'):.2f} x (render + forward b1)")
    result = {"n": a.n, "backbone": a.backbone, "render_size": a.render_size, "camera": a.camera, "device": device,
              "batch_size": a.batch_size, "cli_one_process_s": t_one, "cli_separate_processes_s": t_sep,
              "cli_runs_timed": cli_runs, "speedup": (t_sep / t_one) if t_one else None,
              "rounds": rounds, **{f"median_{k}": med(k) for k in rounds[0]}}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
