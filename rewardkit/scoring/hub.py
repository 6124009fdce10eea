"""Scorers on the Hugging Face Hub: load ``org/name`` like any other model, push a scorer (set) there.

::

    from rewardkit.scoring import load_scorer
    scorers = load_scorer("org/rewardkit-chairs")                    # a Hub id (not a local folder)
    scorers = load_scorer("org/rewardkit-chairs", revision="v1")     # a branch, tag or commit

    from rewardkit.scoring.hub import push_to_hub
    push_to_hub("scorers/", "org/rewardkit-chairs")                  # a scorer (set) directory or object

A string that is an existing local folder is always that folder. Anything else shaped like a Hub id
(``org/name``) goes through :func:`huggingface_hub.snapshot_download`: its cache (``HF_HOME`` /
``HF_HUB_CACHE``), ``revision``, token and offline mode (``HF_HUB_OFFLINE=1`` reads the cache only).
The scorer then loads from the cached snapshot exactly as from a local directory (same checks: format
and rewardkit versions, weights against the architecture).

The model card (``README.md``, written by ``save_pretrained``) starts with the YAML front matter the Hub
reads: ``library_name: rewardkit``, ``license``, ``tags`` and, where the backbone's initial weights are
an open_clip release with a Hub home, ``base_model``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rewardkit.scoring.base import BaseScorer, ScorerSet, load_scorer
from rewardkit.scoring.card import (
    BASE_TAGS,
    DEFAULT_LICENSE,
    LIBRARY_NAME,
    base_model_of,
    card_front_matter,
    card_metadata,
)
from rewardkit.scoring.format import CARD_FILE
from rewardkit.scoring.resolve import is_hub_id, resolve_scorer_dir


def _with_license(card: str, license: str) -> str:
    import yaml

    if card.startswith("---\n"):
        head, sep, body = card[4:].partition("\n---\n")
        if sep:
            meta = yaml.safe_load(head) or {}
            meta["license"] = license
            return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body
    return card


# ------------------------------------------------------------------------------------------------------ #
# pushing
# ------------------------------------------------------------------------------------------------------ #
def prepare_upload(scorers: Any, folder: str | os.PathLike, *, license: str | None = None) -> Path:
    """Write what :func:`push_to_hub` uploads into ``folder``: the scorer (set) directory exactly as
    ``save_pretrained`` writes it (``config.json``, ``model.safetensors``, the model card with its front
    matter; a set's sub-directories). ``scorers``: a scorer, a scorer set, or a scorer (set) directory
    (checked by loading it first, so a broken directory is never uploaded)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(scorers, (BaseScorer, ScorerSet)):
        scorers.save_pretrained(folder)
    else:
        src = Path(scorers)
        load_scorer(src, device="cpu")  # ScorerError for anything that would not load back
        shutil.copytree(src, folder, dirs_exist_ok=True)
    if license:
        for card in folder.rglob(CARD_FILE):
            card.write_text(_with_license(card.read_text(), license))
    return folder


def push_to_hub(scorers: Any, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                token: str | bool | None = None, commit_message: str | None = None, license: str | None = None,
                create_repo: bool = True, endpoint: str | None = None) -> Any:
    """Upload a scorer or scorer set (object or directory) to the Hub repo ``repo_id`` (created if needed)
    with :meth:`huggingface_hub.HfApi.upload_folder`; returns its commit info. ``load_scorer(repo_id)``
    loads it back."""
    from huggingface_hub import HfApi

    if not is_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub model id (org/name)")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="rewardkit-push-") as tmp:
        folder = prepare_upload(scorers, Path(tmp) / "upload", license=license)
        if create_repo:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload rewardkit scorer")


__all__ = ["BASE_TAGS", "DEFAULT_LICENSE", "LIBRARY_NAME", "base_model_of", "card_front_matter", "card_metadata",
           "is_hub_id", "prepare_upload", "push_to_hub", "resolve_scorer_dir"]
