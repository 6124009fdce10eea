"""Where a scorer name points: a local folder, or else the snapshot of a Hugging Face Hub repo ``org/name``.

A string that is an existing local folder is always that folder. Anything else shaped like a Hub id goes
through :func:`huggingface_hub.snapshot_download` (its cache, ``revision``, token and offline mode).
:func:`rewardkit.scoring.base.load_scorer` calls :func:`resolve_scorer_dir` first; pushing is in
:mod:`rewardkit.scoring.hub`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rewardkit.scoring.errors import ScorerError

# org/name: Hub naming rules (letters, digits, '-', '_', '.'; no leading '.' or '-'; no '--' or '..')
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_hub_id(text: Any) -> bool:
    """Whether ``text`` is shaped like a Hub model id ``org/name`` (it may still also be a local path)."""
    if not isinstance(text, str):
        return False
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text and not text.endswith((".", "-"))


def resolve_scorer_dir(name_or_path: str | os.PathLike, *, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """The local directory of a scorer: ``name_or_path`` itself when it exists (or is not a Hub id, so the
    loader reports it missing), else the snapshot of the Hub repo ``org/name`` at ``revision`` (downloaded
    into, or with ``HF_HUB_OFFLINE=1`` read from, the Hugging Face cache). Raises
    :class:`rewardkit.scoring.errors.ScorerError` in one line when the Hub cannot provide it."""
    path = Path(name_or_path)
    if path.exists() or not is_hub_id(str(name_or_path)):
        return path  # a local folder (or a missing one: the loader says so)
    repo_id = str(name_or_path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        raise ScorerError(f"{repo_id}: not a local folder, and huggingface_hub (to fetch it from the Hub) is not "
                          "installed: pip install huggingface_hub") from None
    try:
        snap = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token, repo_type="model")
    except Exception as exc:  # every Hub failure is one line naming the id
        from huggingface_hub.constants import is_offline_mode

        at = f" at revision {revision!r}" if revision else ""
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if is_offline_mode():
            why = f"offline (HF_HUB_OFFLINE) and not in the Hugging Face cache ({type(exc).__name__}: {why})"
        else:
            why = f"{type(exc).__name__}: {why}"
        raise ScorerError(f"{repo_id}: not a local folder, and the Hugging Face Hub repo{at} cannot be loaded: "
                          f"{why}") from None
    return Path(snap)


__all__ = ["is_hub_id", "resolve_scorer_dir"]
