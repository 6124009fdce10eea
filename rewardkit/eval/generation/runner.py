"""Evaluating a folder of generations as AR3D-R1 reports it: render, featurize (cached), score.

:func:`~rewardkit.eval.generation.inputs.read_prompt_set` reads the prompt set (CSV: ``object_id``, ``prompt``, optional ``category``,
``generation``, ``reference``) and finds each object's generated mesh and its reference (a mesh, or a folder
of reference renders). :func:`evaluate_generations` then

1. renders every generation (and every reference mesh) with the protocol of an
   :class:`~rewardkit.eval.generation.protocol.EvalGenConfig` through :func:`rewardkit.render.render_batch`
   (meshes load in an :class:`~rewardkit.io.IsolatedLoader` under :class:`~rewardkit.io.MeshLimits`); a render
   folder that is already complete for the same mesh digest, cameras and render settings
   (:func:`rewardkit.render.is_rendered`) is reused;
2. takes reference renders from image folders as they are, read by :func:`rewardkit.render.view_files` (a
   rewardkit render folder, or the PNG/JPEG/WebP files of a folder in name order, e.g. Toys4K's
   ``000.png ... 023.png``; image sizes checked from the header against ``max_texture_pixels`` before
   decoding; RGBA composited over the background);
3. computes Inception-V3, DINOv2 and CLIP features in batches
   (:func:`~rewardkit.eval.generation.features.featurize`), kept in rewardkit's feature cache
   (:mod:`rewardkit.render.features`: keyed by the view files, the compositing background and each
   extractor's fingerprint, over its weight files and preprocessing), so a re-run only featurizes what changed;
4. scores KD ×100 (mean ± std over subsets), FD and the CLIP score overall and per ``category``
   (:func:`~rewardkit.eval.generation.metrics.set_metrics`).

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

from rewardkit.eval.generation.features import feature_caches, featurize, load_extractors
from rewardkit.eval.generation.inputs import EvalInputError, EvalObject
from rewardkit.eval.generation.metrics import set_metrics
from rewardkit.eval.generation.plots import OVERALL
from rewardkit.eval.generation.protocol import (
    MME3DR_CATEGORIES,
    EvalGenConfig,
    process_prompt,
    protocol_record,
)

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
    from rewardkit.render import is_rendered

    try:
        return is_rendered(render_dir, protocol, (mode,), rc.to_dict(), mesh_sha256=sha256_file(mesh))
    except OSError:
        return False


def render_meshes(meshes: dict[str, Path], root: Path, cfg: EvalGenConfig, *, limits=None, progress: bool = True,
                  label: str = "render") -> tuple[dict[str, list[Path]], dict[str, str], int]:
    """Render ``{name: mesh}`` into ``root/<name>/``; returns ``({name: view paths}, {name: error}, n rendered
    now)`` (render folders already up to date are reused)."""
    from rewardkit.render import render_batch, view_files

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
            views[n] = view_files(root / n, mode)
        except (OSError, ValueError) as exc:
            errors[n] = str(exc)
    return views, errors, len(todo)


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
    from rewardkit.render import view_files

    t0 = time.perf_counter()
    say = log or (lambda s: None)
    limits = limits or MeshLimits.from_env()
    out_dir = Path(out_dir)
    if not objects:
        raise EvalInputError("no objects to evaluate")
    device = resolve_device(cfg.device, what="device")
    extractors = extractors if extractors is not None else load_extractors(cfg, device)
    caches = feature_caches(cache_dir if cache_dir is not None else out_dir / "cache", extractors)
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
                ref_views[n] = view_files(Path(k), mode, max_pixels=limits.max_texture_pixels)
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
    gen_feats = featurize({gen_names[o.object_id]: gen_views[gen_names[o.object_id]] for o in evaluated}, extractors,
                          caches, background=cfg.background, batch_size=cfg.batch_size, progress=progress,
                          label="features (generated)")
    ref_feats = featurize({r: ref_views[r] for r in used_refs}, {k: v for k, v in extractors.items() if k != "clip"},
                          caches, background=cfg.background, batch_size=cfg.batch_size, progress=progress,
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
                           sorted({ref_names[ref_key[o.object_id]] for o in objs}), text, cfg.kd)

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
                   "feature_cache_hits": sum(c.hits for c in caches.values()),
                   "feature_cache_misses": sum(c.misses for c in caches.values()), "device": device},
    }
    return EvalResult(data)


__all__ = ["EvalResult", "RESULT_FORMAT", "evaluate_generations", "render_meshes"]
