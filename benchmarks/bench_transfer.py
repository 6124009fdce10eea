"""Transfer of the demo's exported scorers to real meshes: original vs controlled degradations.

    python benchmarks/bench_transfer.py --scorer pretrained=data/scorers [--scorer random-init=OTHER/data/scorers]
        [--meshes ../shared/meshes] [--noise 0.01 0.03] [--hue 120] [--out out/bench_transfer] [--json]

The variants (original, vertex noise at each ``--noise`` strength, texture grey, hue rotated by ``--hue``) and
the summary are :mod:`rewardkit.eval.transfer`'s, the same implementation as the ``evaluate`` stage's
real-mesh report (``reports/metrics.json``'s ``transfer``); this script scores them through the real CLI,
``rewardkit score --pairs-file ... --json``, once per scorer set, exactly as a user would, and prints the
figures of several scorer sets side by side. Per scorer set and stage: how often the original scores above
each degradation (a tie counts half), and the largest ``|global(original) - global(texture-degraded)|``:
the global stage renders geometry only, so this must be 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewardkit.eval.transfer import make_variants, summarise  # noqa: E402  (the one implementation)


def score_with_cli(rows: list[dict], scorer: str, out: Path, name: str) -> tuple[dict, float]:
    """``rewardkit score --pairs-file --json`` over every row: {(id, variant): {stage: score}}, seconds."""
    pairs = out / f"pairs_{name}.csv"
    with pairs.open("w", newline="") as fh:
        w = csv.writer(fh)
        for r in rows:  # the CLI resolves a pairs file's mesh paths against the file's own folder
            w.writerow([os.path.relpath(Path(r["mesh"]).resolve(), pairs.parent.resolve()), r["prompt"]])
    exe = Path(sys.executable).parent / "rewardkit"
    cmd = [str(exe) if exe.exists() else "rewardkit", "score", "--pairs-file", str(pairs), "--scorer", scorer,
           "--json", "--no-progress", "--device", "cpu"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYOPENGL_PLATFORM":
                                                                 os.environ.get("PYOPENGL_PLATFORM", "egl")})
    dt = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    results = json.loads(p.stdout)["results"]
    if len(results) != len(rows):
        raise SystemExit(f"{' '.join(cmd)}: {len(results)} results for {len(rows)} meshes")
    scores, errors = {}, []
    for r, res in zip(rows, results):  # one result per row, in order
        if res.get("error"):
            errors.append(res["error"])
            continue
        scores[(r["id"], r["variant"])] = res["scores"]
    if errors:
        print(f"  {name}: {len(errors)} of {len(rows)} meshes not scored, e.g. {errors[0]}", flush=True)
    if not scores:
        raise SystemExit(f"{' '.join(cmd)} scored no mesh: {errors[0] if errors else p.stderr[-2000:]}")
    return scores, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", action="append", required=True, metavar="NAME=DIR",
                    help="a scorer set to compare (repeatable), e.g. pretrained=data/scorers")
    ap.add_argument("--meshes", default=str(ROOT.parent / "shared" / "meshes"), help="folder with manifest.json")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.03],
                    help="vertex noise std(s) as a fraction of the largest extent (one variant each)")
    ap.add_argument("--hue", type=float, default=120.0, help="hue rotation in degrees")
    ap.add_argument("--out", default="out/bench_transfer", help="where the GLBs and the pairs files go")
    ap.add_argument("--json", action="store_true", help="also print the whole result as one JSON line")
    args = ap.parse_args()

    manifest = Path(args.meshes) / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: not found (the real meshes: ../shared/meshes relative to the repository)")
    out = Path(args.out)
    rows, skipped = make_variants(manifest, out, args.noise, args.hue)
    print(f"{len({r['id'] for r in rows})} meshes, {len(rows)} GLBs under {out} (noise {args.noise} x extent, "
          f"hue {args.hue:g} deg)")
    for s in skipped:
        print(f"  skipped {s['id']} {s['variant']}: {s['why']}")
    result = {"noise": args.noise, "hue": args.hue, "skipped": skipped, "scorers": {}}
    for spec in args.scorer:
        name, _, d = spec.partition("=")
        if not d:
            name, d = Path(spec).name, spec
        scores, dt = score_with_cli(rows, d, out, name)
        summ = summarise(scores)
        result["scorers"][name] = {"dir": d, "cli_seconds": round(dt, 1), "scored": len(scores), **summ}
        print(f"\n{name} ({d}; rewardkit score on {len(scores)} meshes: {dt:.1f} s)")
        for stage, s in summ.items():
            per = ", ".join(f"{k} {v['original_wins']} (n={v['n']})" for k, v in s["per_degradation"].items())
            print(f"  {stage}: original wins on own degradations {s['own']} (lowest type {s['own_min']}), on the "
                  f"other stage's {s['other']}; {per}")
        if "global" in summ:
            print(f"  global: max |score change| under texture-only changes = "
                  f"{summ['global']['max_abs_shift_under_texture_changes']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
