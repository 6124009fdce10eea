"""The scorer service's request validation: :class:`RequestParser` turns a ``/score`` JSON body into
:class:`~rewardkit.scoring.service_batching.Job` s (every key, type, count and size checked, and the pixel
total summed from the image headers, before the first image is decoded), picks the scorers of an item, and
checks a ``/score_mesh`` upload's prompt and file name. Every refusal is a
:class:`~rewardkit.scoring.errors.RequestError` whose status and message the service answers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardkit.scoring.base import ScorerSet
from rewardkit.scoring.errors import RequestError
from rewardkit.scoring.service_batching import Job
from rewardkit.scoring.service_limits import ServiceLimits
from rewardkit.scoring.wire import decode_into, image_header

ITEM_KEYS = ("prompt", "views", "scorers", "per_view")


@dataclass
class ItemSpec:
    """A validated item whose images are read up to their headers (nothing decoded yet)."""

    prompt: str
    scorers: list[str]
    per_view: bool
    images: dict[str, list[bytes]]  # mode -> raw PNG/JPEG bytes
    sizes: dict[str, tuple[int, int]]  # mode -> (height, width)
    pixels: int = 0
    where: str = field(default="request")


class RequestParser:
    """Validation of the service's requests against one scorer set and its :class:`ServiceLimits`. The body
    methods run in the service's decoder threads, never on the event loop."""

    def __init__(self, scorer_set: ScorerSet, limits: ServiceLimits) -> None:
        self.scorer_set, self.limits = scorer_set, limits
        self.modes = sorted({m for s in scorer_set.scorers.values() for m in s.modes})

    def names(self, requested: Any, where: str) -> list[str] | None:
        """The ``scorers`` an item asks for (a list or a comma-separated string), None when it names none."""
        ss = self.scorer_set
        if requested is None:
            return None
        if isinstance(requested, str):
            requested = [x.strip() for x in requested.split(",") if x.strip()]
        if not isinstance(requested, list) or not requested or not all(isinstance(x, str) for x in requested):
            raise RequestError(422, f"{where}: 'scorers' must be a non-empty list of scorer names (or a "
                                    f"comma-separated string); this service has {ss.names()}")
        unknown = [n for n in requested if n not in ss.scorers]
        if unknown:
            raise RequestError(422, f"{where}: unknown scorers {unknown}; this service has {ss.names()}")
        return requested

    def select(self, requested: Any, present_modes: set[str], where: str) -> list[str]:
        """The scorers that score an item with views of ``present_modes``: the requested ones (each must find
        its modes), else every scorer whose modes are all present."""
        ss = self.scorer_set
        names = self.names(requested, where)
        if names is None:
            chosen = [n for n, s in ss.items() if set(s.modes) <= present_modes]
            if not chosen:
                needs = "; ".join(f"{n} needs {s.modes}" for n, s in ss.items())
                raise RequestError(422, f"{where}: no scorer can use views of modes {sorted(present_modes)} ({needs})")
            return chosen
        for n in names:
            missing = [m for m in ss[n].modes if m not in present_modes]
            if missing:
                raise RequestError(422, f"{where}: scorer {n!r} needs render modes {ss[n].modes}; missing {missing}")
        return names

    def check_item(self, item: Any, where: str) -> ItemSpec:
        """Validate one item and read its images' headers."""
        ss, limits = self.scorer_set, self.limits
        if not isinstance(item, Mapping):
            raise RequestError(422, f"{where}: expected a JSON object {{prompt, views, scorers?, per_view?}}, got "
                                    f"{type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in ITEM_KEYS)
        if unknown:
            raise RequestError(422, f"{where}: unknown keys {unknown[:5]}; an item has {list(ITEM_KEYS)}")
        if "prompt" not in item:
            raise RequestError(422, f"{where}: 'prompt' is missing")
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(422, f"{where}: 'prompt' must be a non-empty string")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(422, f"{where}: prompt has {len(prompt)} characters, over the limit of "
                                    f"{limits.max_prompt_chars} (max_prompt_chars)")
        per_view = item.get("per_view", False)
        if not isinstance(per_view, bool):
            raise RequestError(422, f"{where}: 'per_view' must be true or false, got {type(per_view).__name__}")
        if "views" not in item:
            raise RequestError(422, f"{where}: 'views' is missing")
        views = item["views"]
        requested = self.names(item.get("scorers"), where)
        if isinstance(views, list):
            modes = sorted({m for n in (requested or ss.names()) for m in ss[n].modes})
            if len(modes) != 1:
                raise RequestError(422, f"{where}: 'views' is a list, but the scorers need modes {modes}; "
                                        "send {mode: [PNG, ...]}")
            views = {modes[0]: views}
        if not isinstance(views, Mapping) or not views:
            raise RequestError(422, f"{where}: 'views' must be {{mode: [base64 PNG, ...]}} with at least one mode "
                                    f"(this service's modes: {self.modes})")
        if len(views) > limits.max_modes:
            raise RequestError(422, f"{where}: {len(views)} render modes in 'views', over the limit of "
                                    f"{limits.max_modes} (max_modes)")
        for mode, images in views.items():
            if not isinstance(images, list) or not images:
                raise RequestError(422, f"{where}: views[{mode!r}] must be a non-empty list of base64 PNGs")
            if len(images) > limits.max_views:
                raise RequestError(422, f"{where}: {len(images)} views for mode {mode!r}, over the limit of "
                                        f"{limits.max_views} (max_views)")
        chosen = self.select(requested, set(views), where)
        needed = [m for m in views if any(m in ss[n].modes for n in chosen)]
        spec = ItemSpec(prompt=prompt, scorers=chosen, per_view=per_view, images={}, sizes={}, where=where)
        for mode in needed:
            images = views[mode]
            raws, shapes = [], set()
            for i in range(len(images)):
                raw, w, h = image_header(images[i], limits, f"{where}.views[{mode!r}][{i}]")
                images[i] = None  # the base64 text is not needed any more
                raws.append(raw)
                shapes.add((h, w))
                spec.pixels += w * h
                if spec.pixels > limits.max_item_pixels:
                    raise RequestError(413, f"{where}: its views have more than {limits.max_item_pixels} pixels "
                                            "(max_item_pixels; sum of width*height)")
            if len(shapes) > 1:
                raise RequestError(422, f"{where}: views of mode {mode!r} have different sizes {sorted(shapes)}")
            spec.images[str(mode)], spec.sizes[str(mode)] = raws, shapes.pop()
        return spec

    @staticmethod
    def decode(spec: ItemSpec) -> Job:
        """Decode a checked item's images into preallocated uint8 tensors, dropping each raw image once done."""
        tensors: dict[str, torch.Tensor] = {}
        for mode, raws in spec.images.items():
            h, w = spec.sizes[mode]
            out = torch.empty((len(raws), 3, h, w), dtype=torch.uint8)
            for i in range(len(raws)):
                decode_into(raws[i], out[i], f"{spec.where}.views[{mode!r}][{i}]")
                raws[i] = b""
            tensors[mode] = out
        return Job(prompt=spec.prompt, views=tensors, scorers=spec.scorers, per_view=spec.per_view)

    def parse_body(self, box: list) -> tuple[list[Job], bool]:
        """JSON body (the one element of ``box``, taken out so no reference outlives the parse) -> jobs: validate
        everything and sum the pixels from the image headers, then decode. -> (jobs, whether the request was
        the ``items`` form)."""
        limits = self.limits
        raw = box.pop()
        try:
            text = raw.decode("utf-8")
            del raw  # the bytes go before the parsed strings arrive: one body-sized copy less at the peak
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RequestError(400, f"body is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc
        del text
        many = isinstance(body, Mapping) and "items" in body
        if many:
            extra = sorted(str(k) for k in body if k != "items")
            if extra:
                raise RequestError(422, f"unknown keys {extra[:5]} next to 'items'; a batch is {{\"items\": [item, ...]}}")
            items = body["items"]
            if not isinstance(items, list) or not items:
                raise RequestError(422, "'items' must be a non-empty list of items")
            if len(items) > limits.max_items:
                raise RequestError(422, f"{len(items)} items in one request, over the limit of {limits.max_items} "
                                        "(max_items)")
            specs = [self.check_item(it, f"items[{i}]") for i, it in enumerate(items)]
        else:
            specs = [self.check_item(body, "request")]
        del body
        total = sum(s.pixels for s in specs)
        if total > limits.max_request_pixels:
            raise RequestError(413, f"the request's views have {total} pixels, over the limit of "
                                    f"{limits.max_request_pixels} (max_request_pixels; sum of width*height)")
        return [self.decode(s) for s in specs], many

    def check_prompt(self, prompt: str) -> None:
        """A ``/score_mesh`` form's prompt."""
        if not prompt.strip():
            raise RequestError(422, "'prompt' must be a non-empty string")
        if len(prompt) > self.limits.max_prompt_chars:
            raise RequestError(422, f"prompt has {len(prompt)} characters, over the limit of {self.limits.max_prompt_chars}")

    @staticmethod
    def upload_suffix(filename: str | None) -> str:
        """The format of an uploaded mesh from its file name (self-contained formats only)."""
        from rewardkit.io import SUPPORTED_FORMATS

        suffix = Path(filename or "").suffix.lower()
        if suffix not in SUPPORTED_FORMATS or suffix == ".gltf":
            raise RequestError(415, f"mesh file {filename!r}: format {suffix or '(none)'} not supported here; "
                                    f"upload one of {', '.join(s for s in SUPPORTED_FORMATS if s != '.gltf')} "
                                    "(self-contained files; .glb for textured meshes)")
        return suffix


def upload_name(filename: str | None, suffix: str) -> str:
    """The uploaded file's own name, reduced to safe characters (messages name it, never a server path)."""
    stem = Path((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:80] or "mesh"
    return stem + suffix


def scrub(message: str, folder: str) -> str:
    """Drop the server's temporary folder from a message about an upload."""
    for form in (folder + os.sep, folder):
        message = message.replace(form, "")
    return message


__all__ = ["ITEM_KEYS", "ItemSpec", "RequestParser", "scrub", "upload_name"]
