"""Evaluating a folder of generations as AR3D-R1 reports it: render, featurize (cached), score.

:func:`~rewardkit.eval.generation.inputs.read_prompt_set` reads the prompt set (CSV: ``object_id``, ``prompt``, optional ``category``,
``generation``, ``reference``) and finds each object's generated mesh and its reference (a mesh, or a folder
of reference renders). :func:`evaluate_generations` then

1. renders every generation (and every reference mesh) with the protocol of an
   :class:`~rewardkit.eval.generation.protocol.EvalGenConfig` through :func:`rewardkit.render.render_batch`
   (meshes load in an :class:`~rewardkit.io.IsolatedLoader` under :class:`~rewardkit.io.MeshLimits`); a render
   folder whose ``meta.json`` already records the same mesh digest, cameras and render settings is reused;
2. takes reference renders from image folders as they are (a rewardkit render folder, or the PNG/JPEG files
   of a folder in name order, e.g. Toys4K's ``000.png ... 023.png``; RGBA composited over the background,
   image sizes checked from the header against ``max_texture_pixels`` before decoding);
3. computes Inception-V3, DINOv2 and CLIP features in batches, cached per render under
   ``<cache>/<extractor fingerprint>/<render digest>.npy`` (the digest is over the view files' bytes and the
   compositing background, the fingerprint over the weight files and the preprocessing), so a re-run only
   featurizes what changed;
4. scores KD ×100 (mean ± std over subsets), FD and the CLIP score overall and per ``category``.

A generation or reference that is missing, fails to load or render, or has no views is reported in the
result (``excluded``, with the reason) and left out of every set (its object's reference too), never
counted silently; :attr:`EvalResult.ok` is False then (the CLI exits with 1).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewardkit.eval.generation import metrics as M
from rewardkit.eval.generation.inputs import EvalInputError, EvalObject
from rewardkit.eval.generation.plots import OVERALL
from rewardkit.eval.generation.protocol import (
    MME3DR_CATEGORIES,
    EvalGenConfig,
    process_prompt,
    protocol_record,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RESULT_FORMAT = "rewardkit.eval_gen/1"


@dataclass
class EvalResult:
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.data["inputs"]["excluded"]

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2) + "\n")
        return path


# -- renders -----------------------------------------------------------------------------------------------

def _safe_name(text: str, salt: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "object"
    return f"{base}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"


def _render_settings(cfg: EvalGenConfig):
    from rewardkit.render import RenderConfig, get_protocol

    protocol = get_protocol(cfg.views, size=cfg.size)
    rc = RenderConfig(background=tuple(cfg.background), geometry_color=tuple(cfg.untextured_color))
    return protocol, rc, ("rgb" if cfg.shading == "textured" else "geometry")


def _reusable(render_dir: Path, mesh: Path, protocol, rc, mode: str) -> bool:
    from rewardkit.io import sha256_file

    meta_file = render_dir / "meta.json"
    if not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text())
        return (meta["mesh_sha256"] == sha256_file(mesh) and meta["protocol"] == protocol.to_dict()
                and meta["render_config"] == rc.to_dict() and mode in meta["modes"]
                and all((render_dir / mode / f"{v['index']:02d}.png").is_file() for v in meta["views"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def render_meshes(meshes: dict[str, Path], root: Path, cfg: EvalGenConfig, *, limits=None, progress: bool = True,
                  label: str = "render") -> tuple[dict[str, list[Path]], dict[str, str], int]:
    """Render ``{name: mesh}`` into ``root/<name>/``; returns ``({name: view paths}, {name: error}, n rendered
    now)`` (render folders already up to date are reused)."""
    from rewardkit.render import render_batch, view_paths

    protocol, rc, mode = _render_settings(cfg)
    todo = {n: p for n, p in meshes.items() if not _reusable(root / n, p, protocol, rc, mode)}
    errors: dict[str, str] = {}
    if todo:
        names = list(todo)
        summary = render_batch([todo[n] for n in names], root, protocol, (mode,), workers=cfg.workers, up=cfg.up,
                               config=rc, names=names, progress=progress, limits=limits)
        by_path = {f["mesh_path"]: f["error"] for f in summary.failed}
        for n in names:
            if str(todo[n]) in by_path:
                errors[n] = by_path[str(todo[n])]
    views: dict[str, list[Path]] = {}
    for n in meshes:
        if n in errors:
            continue
        try:
            views[n] = view_paths(root / n, mode)
        except (OSError, ValueError) as exc:
            errors[n] = str(exc)
    return views, errors, len(todo)


def image_folder_views(folder: Path, max_pixels: int, mode: str) -> list[Path]:
    """The view files of a reference folder: a rewardkit render folder's ``mode`` views, else its images in
    name order. Raises ``ValueError`` naming the problem (no images, an image too large or unreadable)."""
    import PIL.Image

    from rewardkit.render import view_paths

    if (folder / "meta.json").is_file():
        paths = view_paths(folder, mode)
    else:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"{folder}: no reference images ({', '.join(IMAGE_SUFFIXES)})")
    for p in paths:
        try:
            with PIL.Image.open(p) as im:  # the header only
                w, h = im.size
        except Exception as exc:
            raise ValueError(f"{p}: not a readable image: {exc}") from exc
        if w * h > max_pixels:
            raise ValueError(f"{p}: {w}x{h} pixels exceeds max_texture_pixels={max_pixels}")
    return paths


def load_image(path: Path, background: Sequence[int]) -> np.ndarray:
    """uint8 [H, W, 3]; an alpha channel is composited over ``background``."""
    import PIL.Image

    with PIL.Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
            a = rgba[..., 3:4] / 255.0
            out = rgba[..., :3] * a + np.asarray(background, np.float32) * (1.0 - a)
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def render_digest(paths: Sequence[Path], background: Sequence[int]) -> str:
    """The cache key of one render: the view files' bytes in order, and the compositing background."""
    h = hashlib.sha256(json.dumps(list(background)).encode())
    for p in paths:
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


# -- features ----------------------------------------------------------------------------------------------

class FeatureCache:
    """``<root>/<fingerprint[:24]>/<digest>.npy``: one float32 array [views, dim] per render and extractor."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, fingerprint: str, digest: str) -> Path:
        return self.root / fingerprint[:24] / f"{digest}.npy"

    def get(self, fingerprint: str, digest: str, n_views: int) -> np.ndarray | None:
        p = self.path(fingerprint, digest)
        if p.is_file():
            try:
                a = np.load(p, allow_pickle=False)
                if a.ndim == 2 and a.shape[0] == n_views:
                    self.hits += 1
                    return a
            except (OSError, ValueError):
                pass
        self.misses += 1
        return None

    def put(self, fingerprint: str, digest: str, features: np.ndarray) -> None:
        p = self.path(fingerprint, digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, np.asarray(features, dtype=np.float32), allow_pickle=False)
        tmp.replace(p)


def featurize(renders: dict[str, list[Path]], extractors: dict[str, Any], cache: FeatureCache, *,
              background: Sequence[int], batch_size: int = 32, progress: bool = True,
              label: str = "features") -> dict[str, dict[str, np.ndarray]]:
    """``{extractor: {render name: features [views, dim]}}``: cached ones read, the rest computed in batches
    of ``batch_size`` views across renders (each image decoded once for all extractors that need it)."""
    from rewardkit.progress import progress_bar

    digests = {n: render_digest(paths, background) for n, paths in renders.items()}
    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in extractors}
    need: dict[str, list[str]] = {}  # render -> extractors to run
    for n, paths in renders.items():
        for k, ext in extractors.items():
            got = cache.get(ext.fingerprint, digests[n], len(paths))
            if got is None:
                need.setdefault(n, []).append(k)
            else:
                out[k][n] = got
    names = list(need)
    total = sum(len(renders[n]) for n in names)
    with progress_bar(label, disable=not progress or total == 0) as bar:
        task = bar.add_task("", total=total)
        i = 0
        while i < len(names):  # a chunk of renders with at least batch_size views
            chunk, views = [], 0
            while i < len(names) and (views < batch_size or not chunk):
                chunk.append(names[i])
                views += len(renders[names[i]])
                i += 1
            images = {n: [load_image(p, background) for p in renders[n]] for n in chunk}
            for k, ext in extractors.items():
                todo = [n for n in chunk if k in need[n]]
                if not todo:
                    continue
                flat = [(n, im) for n in todo for im in images[n]]
                feats = []
                for b in range(0, len(flat), batch_size):
                    batch = [im for _, im in flat[b:b + batch_size]]
                    sizes = {im.shape for im in batch}
                    if len(sizes) == 1:
                        feats.append(ext(np.stack(batch)))
                    else:  # mixed image sizes: one at a time (the extractor resizes each)
                        feats.extend(ext(im[None]) for im in batch)
                arr = np.concatenate(feats, axis=0)
                start = 0
                for n in todo:
                    f = arr[start:start + len(images[n])]
                    start += len(images[n])
                    cache.put(ext.fingerprint, digests[n], f)
                    out[k][n] = f.astype(np.float32)
            bar.update(task, advance=sum(len(images[n]) for n in chunk), description=chunk[-1])
    return out


def load_extractors(cfg: EvalGenConfig, device: str) -> dict[str, Any]:
    """The configured extractors (``inception``, ``dinov2``, ``clip``); unconfigured ones are left out."""
    from rewardkit.eval.generation.features import (
        load_clip,
        load_dinov2,
        load_inception,
    )

    ext: dict[str, Any] = {}
    if cfg.inception.weights:
        ext["inception"] = load_inception(cfg.inception.weights, cfg.inception.format, cfg.inception.input_size, device)
    if cfg.dinov2.weights:
        ext["dinov2"] = load_dinov2(cfg.dinov2.weights, cfg.dinov2.input_size, device)
    if cfg.clip.weights:
        ext["clip"] = load_clip(cfg.clip.arch, cfg.clip.weights, device)
    if not ext:
        raise EvalInputError("no extractor configured: set inception.weights, dinov2.weights and/or clip.weights "
                             "(local files; docs/generator-evaluation.md names the paper's)")
    return ext


# -- metrics -----------------------------------------------------------------------------------------------

def set_metrics(gen: dict[str, dict[str, np.ndarray]], ref: dict[str, dict[str, np.ndarray]], objects: Sequence[str],
                refs: Sequence[str], text: dict[str, np.ndarray] | None, cfg: EvalGenConfig) -> dict[str, Any]:
    """The metrics between the renders of ``objects`` (generated) and ``refs`` (their references)."""
    out: dict[str, Any] = {"objects": len(objects), "references": len(refs)}
    for k in ("inception", "dinov2"):
        if k not in gen:
            continue
        x = np.concatenate([gen[k][o] for o in objects]).astype(np.float64)
        y = np.concatenate([ref[k][r] for r in refs]).astype(np.float64)
        out["generated_views"], out["reference_views"] = len(x), len(y)
        short = "incep" if k == "inception" else "dinov2"
        if min(len(x), len(y)) < 2:
            out[f"kd_{short}_x100"] = out[f"kd_{short}_x100_std"] = out[f"fd_{short}"] = None
            continue
        kd = M.kernel_distance(x, y, cfg.kd.subsets, cfg.kd.subset_size, cfg.kd.seed)
        out[f"kd_{short}_x100"], out[f"kd_{short}_x100_std"] = kd.scaled()
        out[f"kd_{short}_subset_size"] = kd.subset_size
        out[f"fd_{short}"] = M.frechet_distance(x, y)
    if "clip" in gen and text is not None:
        img = np.concatenate([gen["clip"][o] for o in objects]).astype(np.float64)
        txt = np.concatenate([np.repeat(text[o][None], len(gen["clip"][o]), axis=0) for o in objects])
        idx = np.concatenate([np.full(len(gen["clip"][o]), i) for i, o in enumerate(objects)])
        out["clip_score"] = M.clip_score(img, txt, idx)
    return out


def identical_sets_kd(features: np.ndarray, degree: int = 3) -> float:
    """KD (unscaled, whole sets) of a set against itself: MMD²_u(X, X) = −(2/n)(mean k(x,x) − mean k(x,x′)) —
    small but not 0 (the unbiased estimate drops the diagonal from k(X,X) but not from k(X,Y))."""
    x = np.asarray(features, np.float64)
    k = M.polynomial_kernel(x, x, degree)
    n = len(x)
    diag = float(np.trace(k)) / n
    off = float(k.sum() - np.trace(k)) / (n * (n - 1))
    return -2.0 / n * (diag - off)


# -- the run -----------------------------------------------------------------------------------------------

def evaluate_generations(objects: Sequence[EvalObject], cfg: EvalGenConfig, out_dir: str | Path, *,
                         cache_dir: str | Path | None = None, limits=None, progress: bool = True,
                         log: Callable[[str], None] | None = None, extractors: dict[str, Any] | None = None,
                         name: str | None = None) -> EvalResult:
    """Render, featurize and score ``objects`` (see the module docstring). Renders go to
    ``out_dir/renders/{generated,references}/``, features to ``cache_dir`` (default ``out_dir/cache``).
    ``extractors``: already loaded ones (to reuse across runs), else loaded from ``cfg``."""
    from rewardkit import __version__
    from rewardkit.devices import resolve_device
    from rewardkit.io import MeshLimits

    t0 = time.perf_counter()
    say = log or (lambda s: None)
    limits = limits or MeshLimits.from_env()
    out_dir = Path(out_dir)
    cache = FeatureCache(cache_dir if cache_dir is not None else out_dir / "cache")
    if not objects:
        raise EvalInputError("no objects to evaluate")
    device = resolve_device(cfg.device, what="device")
    extractors = extractors if extractors is not None else load_extractors(cfg, device)
    _, _, mode = _render_settings(cfg)

    excluded: list[dict[str, str]] = []
    live = []
    for o in objects:
        if o.missing:
            excluded.extend({"object_id": o.object_id, "what": m.split(" ")[0], "error": m} for m in o.missing)
        else:
            live.append(o)
    # generations
    gen_names = {o.object_id: _safe_name(o.object_id, str(o.generation)) for o in live}
    say(f"rendering {len(live)} generations ({cfg.views}, {cfg.size} px, {cfg.shading})")
    t = time.perf_counter()
    gen_views, gen_err, n_gen_rendered = render_meshes({gen_names[o.object_id]: o.generation for o in live},
                                                       out_dir / "renders" / "generated", cfg, limits=limits,
                                                       progress=progress)
    render_s = time.perf_counter() - t
    # references (shared references are rendered / read once)
    ref_key = {o.object_id: str(Path(o.reference).resolve()) for o in live}
    ref_names = {k: _safe_name(Path(k).stem if Path(k).suffix else Path(k).name, k) for k in set(ref_key.values())}
    ref_views: dict[str, list[Path]] = {}
    ref_err: dict[str, str] = {}
    n_ref_rendered = 0
    if any(o.reference_kind == "mesh" for o in live):
        say(f"rendering {len(ref_names)} reference meshes")
        t = time.perf_counter()
        ref_views, ref_err, n_ref_rendered = render_meshes({ref_names[k]: Path(k) for k in ref_names},
                                                           out_dir / "renders" / "references", cfg, limits=limits,
                                                           progress=progress, label="render references")
        render_s += time.perf_counter() - t
    else:
        for k, n in ref_names.items():
            try:
                ref_views[n] = image_folder_views(Path(k), limits.max_texture_pixels, mode)
            except (OSError, ValueError) as exc:
                ref_err[n] = str(exc)
    evaluated = []
    for o in live:
        g, r = gen_names[o.object_id], ref_names[ref_key[o.object_id]]
        if g in gen_err:
            excluded.append({"object_id": o.object_id, "what": "generation", "path": str(o.generation),
                             "error": gen_err[g]})
        elif r in ref_err:
            excluded.append({"object_id": o.object_id, "what": "reference", "path": str(o.reference),
                             "error": ref_err[r]})
        else:
            evaluated.append(o)
    for e in excluded:
        say(f"excluded {e['object_id']}: {e['what']}: {e['error']}")
    if not evaluated:
        raise EvalInputError(f"nothing to evaluate: all {len(objects)} objects were excluded "
                             f"(first: {excluded[0]['object_id']}: {excluded[0]['error']})")

    # features (the references of the evaluated objects, each once)
    t = time.perf_counter()
    used_refs = sorted({ref_names[ref_key[o.object_id]] for o in evaluated})
    img_ext = dict(extractors)
    gen_feats = featurize({gen_names[o.object_id]: gen_views[gen_names[o.object_id]] for o in evaluated}, img_ext,
                          cache, background=cfg.background, batch_size=cfg.batch_size, progress=progress,
                          label="features (generated)")
    ref_feats = featurize({r: ref_views[r] for r in used_refs}, {k: v for k, v in img_ext.items() if k != "clip"},
                          cache, background=cfg.background, batch_size=cfg.batch_size, progress=progress,
                          label="features (references)")
    text = None
    if "clip" in extractors:
        texts = {o.object_id: process_prompt(o.prompt, cfg.clip.prompt) for o in evaluated}
        uniq = sorted(set(texts.values()))
        emb = extractors["clip"].encode_text(uniq)
        by_text = dict(zip(uniq, emb))
        text = {gen_names[o]: by_text[t_] for o, t_ in texts.items()}
    feature_s = time.perf_counter() - t

    # metrics: overall and per category
    t = time.perf_counter()
    def subset(objs: Sequence[EvalObject]) -> dict[str, Any]:
        return set_metrics(gen_feats, ref_feats, [gen_names[o.object_id] for o in objs],
                           sorted({ref_names[ref_key[o.object_id]] for o in objs}), text, cfg)

    per_cat: dict[str, Any] = {}
    cats = sorted({o.category for o in evaluated if o.category})
    for c in cats:
        per_cat[c] = subset([o for o in evaluated if o.category == c])
    overall = subset(evaluated)
    metric_s = time.perf_counter() - t

    labels = [d["label"] for d in (e.describe() for e in extractors.values()) if d.get("random_init")]
    unknown_cats = [c for c in cats if c not in MME3DR_CATEGORIES]
    data = {
        "format": RESULT_FORMAT,
        "rewardkit_version": __version__,
        "name": name,
        "metrics": {OVERALL: overall, "per_category": per_cat},
        "protocol": protocol_record(cfg),
        "extractors": {k: e.describe() for k, e in extractors.items()},
        "random_init_extractors": bool(labels),
        "labels": labels,
        "inputs": {
            "objects": len(objects), "evaluated": len(evaluated), "excluded_count": len(excluded),
            "excluded": excluded, "references": len(used_refs),
            "reference_kind": objects[0].reference_kind,
            "categories": {c: sum(o.category == c for o in evaluated) for c in cats},
            "uncategorized": sum(o.category is None for o in evaluated),
            "categories_not_in_mme3dr": unknown_cats,
        },
        "timing": {"render_s": round(render_s, 3), "features_s": round(feature_s, 3), "metrics_s": round(metric_s, 3),
                   "total_s": round(time.perf_counter() - t0, 3), "rendered_now": n_gen_rendered + n_ref_rendered,
                   "feature_cache_hits": cache.hits, "feature_cache_misses": cache.misses, "device": device},
    }
    return EvalResult(data)


__all__ = [
    "EvalResult",
    "FeatureCache",
    "evaluate_generations",
    "featurize",
    "identical_sets_kd",
    "image_folder_views",
    "load_extractors",
    "load_image",
    "render_digest",
    "render_meshes",
    "set_metrics",
]
