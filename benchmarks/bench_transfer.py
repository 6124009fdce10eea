"""Transfer of the demo's exported scorers to real meshes: original vs controlled degradations.

    python benchmarks/bench_transfer.py --scorer pretrained=data/scorers [--scorer random-init=OTHER/data/scorers]
        [--meshes ../shared/meshes] [--noise 0.03] [--hue 120] [--out out/bench_transfer] [--json]

For every asset of ``<meshes>/manifest.json`` (the real third-party meshes, prompts from the manifest) the
mesh is loaded and normalised with ``rewardkit.io.load_mesh`` and written as GLB four times:

- ``original``: unchanged;
- ``vertex_noise`` (a **geometry** degradation, owned by the global stage): every vertex position moved by
  Gaussian noise of ``--noise`` x the mesh's largest extent (coincident vertices, e.g. at UV seams, move
  together, so the surface does not tear); colours and textures untouched;
- ``texture_grey`` (a **texture** degradation, owned by the local stage): texture images, material colours
  and vertex colours turned to their luminance; geometry untouched;
- ``hue_rotated`` (texture): the hue of the same turned by ``--hue`` degrees.

A texture degradation that leaves a mesh's colours unchanged (a mesh without material or colours, or an
already grey one) is not a comparison and is reported as skipped. All GLBs are then scored by the real CLI,
``rewardkit score --pairs-file ... --json``, once per scorer set, exactly as a user would. Printed per scorer
set and stage: how often the original scores above each degradation (a tie counts half), and the largest
``|global(original) - global(texture-degraded)|``: the global stage renders geometry only, so this must be 0.
"""

from __future__ import annotations

import argparse
import colorsys
import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = ("vertex_noise",)
TEXTURE = ("texture_grey", "hue_rotated")


# ------------------------------------------------------------------------------------------------------ #
# colour transforms on uint8 RGB arrays [..., 3]
# ------------------------------------------------------------------------------------------------------ #
def grey(rgb: np.ndarray) -> np.ndarray:
    lum = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.rint(lum), 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    x = rgb[..., :3].astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    v, c = mx, mx - mn
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cs = np.where(c > 0, c, 1)
    h = np.where(mx == r, ((g - b) / cs) % 6, np.where(mx == g, (b - r) / cs + 2, (r - g) / cs + 4)) / 6.0
    h = np.where(c > 0, (h + degrees / 360.0) % 1.0, 0)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(table):
        m = i == k
        out[..., 0] = np.where(m, rr, out[..., 0])
        out[..., 1] = np.where(m, gg, out[..., 1])
        out[..., 2] = np.where(m, bb, out[..., 2])
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


assert tuple(hue_rotate(np.array([255, 0, 0], np.uint8), 120)) == (0, 255, 0)
assert np.allclose(np.array(colorsys.hsv_to_rgb(1 / 3, 1, 1)) * 255, hue_rotate(np.array([255, 0, 0], np.uint8), 120))


def _map_rgba(arr, fn) -> np.ndarray:
    a = np.array(arr, dtype=np.float64)
    scale = 255.0 if a.size and a.max() <= 1.0 and np.issubdtype(np.asarray(arr).dtype, np.floating) else 1.0
    u8 = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    out = u8.copy()
    out[..., :3] = fn(u8[..., :3])
    return out.astype(np.float64) / scale if scale != 1.0 else out


def _map_image(img, fn):
    from PIL import Image

    mode = "RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"
    a = np.asarray(img.convert(mode)).copy()
    a[..., :3] = fn(a[..., :3])
    return Image.fromarray(a, mode)


def recolour(scene, fn):
    """A copy of ``scene`` with every texture image, material colour and vertex/face colour mapped by ``fn``."""
    import trimesh

    out = trimesh.Scene()
    for name, g in scene.geometry.items():
        g = g.copy()
        vis = g.visual
        if isinstance(vis, trimesh.visual.texture.TextureVisuals) and vis.material is not None:
            mat = copy.deepcopy(vis.material)
            for attr in ("image", "baseColorTexture"):
                if getattr(mat, attr, None) is not None:
                    setattr(mat, attr, _map_image(getattr(mat, attr), fn))
            for attr in ("diffuse", "ambient", "baseColorFactor"):
                if getattr(mat, attr, None) is not None:
                    setattr(mat, attr, _map_rgba(getattr(mat, attr), fn))
            g.visual = trimesh.visual.texture.TextureVisuals(uv=vis.uv, material=mat)
        elif isinstance(vis, trimesh.visual.color.ColorVisuals) and vis.defined:
            if vis.kind == "vertex":
                g.visual = trimesh.visual.ColorVisuals(g, vertex_colors=_map_rgba(vis.vertex_colors, fn))
            elif vis.kind == "face":
                g.visual = trimesh.visual.ColorVisuals(g, face_colors=_map_rgba(vis.face_colors, fn))
        out.add_geometry(g, geom_name=name)
    return out


def vertex_noise(scene, fraction: float, seed: int):
    """A copy of ``scene`` with each distinct vertex position moved by N(0, fraction * largest extent)."""
    import trimesh

    geoms = list(scene.geometry.items())
    allv = np.concatenate([g.vertices for _, g in geoms])
    extent = float((allv.max(0) - allv.min(0)).max())
    uniq, inverse = np.unique(np.round(allv, 6), axis=0, return_inverse=True)
    noise = np.random.default_rng(seed).normal(0.0, fraction * extent, size=uniq.shape)[inverse.reshape(-1)]
    out, start = trimesh.Scene(), 0
    for name, g in geoms:
        g = g.copy()
        g.vertices = g.vertices + noise[start:start + len(g.vertices)]
        start += len(g.vertices)
        out.add_geometry(g, geom_name=name)
    return out


def glb_bytes(scene) -> bytes:
    return scene.export(file_type="glb")


def make_variants(manifest: Path, out: Path, noise: float, hue: float) -> tuple[list[dict], list[dict]]:
    """GLBs of every asset and its degradations under ``out``; (rows to score, skipped comparisons)."""
    from rewardkit.io import load_mesh

    rows, skipped = [], []
    assets = json.loads(manifest.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for n, a in enumerate(assets):
        src = manifest.parent / a["id"] / a["mesh"]
        try:
            mesh = load_mesh(src)
        except Exception as exc:
            skipped.append({"id": a["id"], "variant": "*", "why": f"load failed: {exc}"})
            continue
        variants = {"original": mesh.scene,
                    "vertex_noise": vertex_noise(mesh.scene, noise, seed=n),
                    "texture_grey": recolour(mesh.scene, grey),
                    "hue_rotated": recolour(mesh.scene, lambda x: hue_rotate(x, hue))}
        data = {k: glb_bytes(s) for k, s in variants.items()}
        for k, b in data.items():
            if k in TEXTURE and b == data["original"]:
                skipped.append({"id": a["id"], "variant": k, "why": "colours unchanged (no colour, or already grey)"})
                continue
            f = out / f"{a['id']}__{k}.glb"
            f.write_bytes(b)
            rows.append({"id": a["id"], "variant": k, "mesh": str(f), "prompt": a["prompt"]})
    return rows, skipped


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


def summarise(scores: dict) -> dict:
    """Per stage and degradation: how often the original wins (ties half), with counts; global's shift."""
    ids = sorted({i for i, _ in scores})
    stages = sorted({s for v in scores.values() for s in v})
    out: dict = {}
    for stage in stages:
        per = {}
        for deg in (*GEOMETRY, *TEXTURE):
            wins, n, margins = 0.0, 0, []
            for i in ids:
                if (i, "original") not in scores or (i, deg) not in scores:
                    continue
                d = scores[(i, "original")][stage] - scores[(i, deg)][stage]
                wins += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                n += 1
                margins.append(d)
            per[deg] = {"original_wins": round(wins / n, 3) if n else None, "n": n,
                        "mean_margin": round(float(np.mean(margins)), 4) if margins else None}
        own = GEOMETRY if stage == "global" else TEXTURE
        other = TEXTURE if stage == "global" else GEOMETRY
        w = [per[d]["original_wins"] * per[d]["n"] for d in own if per[d]["n"]]
        n = sum(per[d]["n"] for d in own)
        wo = [per[d]["original_wins"] * per[d]["n"] for d in other if per[d]["n"]]
        no = sum(per[d]["n"] for d in other)
        out[stage] = {"per_degradation": per, "own": round(sum(w) / n, 3) if n else None, "own_n": n,
                      "other": round(sum(wo) / no, 3) if no else None, "other_n": no}
    if "global" in stages:
        shifts = [abs(scores[(i, "original")]["global"] - scores[(i, d)]["global"])
                  for i in ids for d in TEXTURE if (i, d) in scores and (i, "original") in scores]
        out["global"]["max_abs_shift_under_texture_changes"] = float(max(shifts)) if shifts else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", action="append", required=True, metavar="NAME=DIR",
                    help="a scorer set to compare (repeatable), e.g. pretrained=data/scorers")
    ap.add_argument("--meshes", default=str(ROOT.parent / "shared" / "meshes"), help="folder with manifest.json")
    ap.add_argument("--noise", type=float, default=0.03, help="vertex noise std as a fraction of the largest extent")
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
            print(f"  {stage}: original wins on own degradations {s['own']} (n={s['own_n']}), on the other "
                  f"stage's {s['other']} (n={s['other_n']}); {per}")
        if "global" in summ:
            print(f"  global: max |score change| under texture-only changes = "
                  f"{summ['global']['max_abs_shift_under_texture_changes']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
