"""Model cards: the ``README.md`` written next to a scorer's ``config.json``, from that config alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_STAGE_TEXT = {
    "global": ("overall shape, parts, proportions, category and plausibility against the prompt",
               "untextured renders, so a texture change cannot move this score (Hi-GRPO step 1, a term of R_high)"),
    "local": ("texture, colour, material and local detail against the prompt",
              "textured, lit renders (Hi-GRPO step 2, R_low)"),
}


def default_description(kind: str, stage: str | None) -> str:
    if kind == "stage-model" and stage in _STAGE_TEXT:
        judges, sees = _STAGE_TEXT[stage]
        return f"rewardkit {stage}-stage reward model: judges {judges}; sees {sees}."
    if kind == "clip-multiview":
        return "Baseline: 100 x cosine(prompt, view) of a CLIP model, averaged over the views (the CLIP score of text-to-3D papers)."
    if kind == "hps-multiview":
        return "Baseline: HPS v2.1 (open_clip ViT-H-14) cosine(prompt, view), max over the views (AR3D-R1's R_HPM)."
    return f"rewardkit scorer ({kind})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True)[:200] + "`"
    return str(v)


def _flatten(d: Mapping[str, Any], depth: int, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (up to ``depth`` levels), so the card shows one row per number."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and depth > 0 and v:
            out.update(_flatten(v, depth - 1, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------------------ #
# the Hub's front matter (YAML at the top of README.md)
# ------------------------------------------------------------------------------------------------------ #
DEFAULT_LICENSE = "apache-2.0"
LIBRARY_NAME = "rewardkit"
BASE_TAGS = ("rewardkit", "reward-model", "text-to-3d", "3d")


def _backbone(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    arch = cfg.get("architecture") or {}
    model = arch.get("model") or {}
    return model.get("backbone") or arch.get("backbone") or {}


def base_model_of(cfg: Mapping[str, Any]) -> str | None:
    """The Hub id of a scorer's initial backbone weights, where known: an ``hf-hub:org/name`` tag, or an
    open_clip release tag whose pretrained config names its Hub home. ``None`` otherwise (random init,
    local weight files, unknown tags)."""
    bb = _backbone(cfg)
    name, tag = bb.get("name"), bb.get("pretrained")
    if not isinstance(tag, str) or not tag:
        return None
    if tag.startswith("hf-hub:"):
        return tag[len("hf-hub:"):].strip("/") or None
    if not isinstance(name, str) or os.sep in tag or Path(tag).suffix:
        return None
    try:
        import open_clip

        hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub")
    except Exception:  # an architecture open_clip does not know (rk-tiny, ...)
        return None
    return hub.strip("/") if isinstance(hub, str) and hub.strip("/") else None


def card_metadata(cfgs: Iterable[Mapping[str, Any]], *, license: str | None = None) -> dict[str, Any]:
    """The Hub metadata of a scorer (one config) or scorer set (its scorers' configs)."""
    cfgs = list(cfgs)
    tags = list(BASE_TAGS)
    base: list[str] = []
    lic = license
    for c in cfgs:
        for t in (f"{c.get('stage')}-stage" if c.get("stage") else None, c.get("kind")):
            if t and t not in tags:
                tags.append(str(t))
        b = base_model_of(c)
        if b and b not in base:
            base.append(b)
        lic = lic or c.get("license")
    meta: dict[str, Any] = {"library_name": LIBRARY_NAME, "license": lic or DEFAULT_LICENSE, "tags": tags}
    if base:
        meta["base_model"] = base[0] if len(base) == 1 else base
    return meta


def card_front_matter(cfgs: Iterable[Mapping[str, Any]], *, license: str | None = None) -> str:
    """``---\\n<YAML>---\\n\\n``: the model card's front matter (see :func:`card_metadata`)."""
    import yaml

    return "---\n" + yaml.safe_dump(card_metadata(cfgs, license=license), sort_keys=False) + "---\n\n"


# ------------------------------------------------------------------------------------------------------ #
# the cards
# ------------------------------------------------------------------------------------------------------ #
def model_card(cfg: Mapping[str, Any]) -> str:
    """The README.md model card, written from config.json (the Hub's YAML front matter first)."""
    arch = cfg.get("architecture") or {}
    model = arch.get("model") or {}
    backbone = model.get("backbone") or arch.get("backbone") or {}
    proto = cfg.get("camera_protocol") or {}
    pre = arch.get("preprocess") or arch.get("preprocessing") or {}
    lines = [
        f"# {cfg.get('name')} ({cfg.get('kind')})",
        "",
        str(cfg.get("description") or ""),
        "",
        "## Inputs",
        "",
        f"- stage: `{cfg.get('stage')}`",
        f"- render modes: {', '.join(f'`{m}`' for m in cfg.get('render_modes') or [])}",
        (f"- camera protocol: `{proto.get('name')}` v{proto.get('version')}: azimuths {proto.get('azimuths')}, "
         f"elevations {proto.get('elevations')}, radius {proto.get('radius')}, vertical FoV {proto.get('yfov_deg')} "
         f"deg, {proto.get('size')} x {proto.get('size')} px; mesh normalized into [-0.5, 0.5]^3, +Y up"),
        f"- backbone: `{backbone.get('name')}` (initial weights: `{backbone.get('pretrained')}`)",
        f"- preprocessing: {_fmt(pre) if pre else 'see config.json'}",
        "",
        "## Usage",
        "",
        "```bash",
        'rewardkit score mesh.glb --prompt "a red chair" --scorer THIS_DIR',
        "rewardkit serve --scorer THIS_DIR --port 8000",
        "```",
        "",
        "```python",
        "from rewardkit.scoring import load_scorer, score_meshes",
        "scorer = load_scorer('THIS_DIR')",
        "results = score_meshes(['mesh.glb'], ['a red chair'], scorer)",
        "```",
        "",
        "Scores are comparable between candidates of the same prompt (use group-normalized advantages in RL);",
        "they have no fixed range.",
        "",
        "## Training data",
        "",
    ]
    td = cfg.get("training_data") or {}
    lines += [f"- {k}: {_fmt(v)}" for k, v in _flatten(td, depth=1).items()] or ["- not recorded"]
    lines += ["", "## Metrics", ""]
    metrics = _flatten(cfg.get("metrics") or {}, depth=3)
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("- not recorded")
    lv = cfg.get("library_versions") or {}
    lines += ["", "## Versions", "",
              f"- written by rewardkit {cfg.get('rewardkit_version')} (scorer format {cfg.get('format_version')})",
              f"- torch {lv.get('torch')}, open_clip {lv.get('open_clip')}",
              "", "Files: `config.json` (everything above, machine-readable), `model.safetensors` (weights; no pickles).",
              ""]
    return card_front_matter([cfg]) + "\n".join(lines)


def set_card(s: Any) -> str:
    """The README.md of a scorer-set directory (``s``: a :class:`~rewardkit.scoring.ScorerSet`)."""
    lines = [card_front_matter([sc.config_dict() for sc in s.scorers.values()]) + "# rewardkit scorer set", "",
             "Scorers used together; scoring a mesh renders it once for all of them.", "",
             "| key | kind | stage | render modes | camera |", "|---|---|---|---|---|"]
    for k, sc in s.items():
        lines.append(f"| `{k}` | {sc.kind} | {sc.stage} | {', '.join(sc.modes)} | {sc.camera.name} @ {sc.render_size}px |")
    lines += ["", "Each sub-directory is a scorer with its own `config.json`, `model.safetensors` and `README.md`.",
              "", "```bash", 'rewardkit score mesh.glb --prompt "a red chair" --scorer THIS_DIR', "```", ""]
    return "\n".join(lines)


__all__ = ["BASE_TAGS", "DEFAULT_LICENSE", "LIBRARY_NAME", "base_model_of", "card_front_matter", "card_metadata",
           "default_description", "model_card", "set_card"]
