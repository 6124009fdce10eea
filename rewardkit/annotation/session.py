"""Finding the server and project that the CLI and pipelines talk to.

URL: explicit argument > ``LABEL_STUDIO_URL`` > the state file of a server started by
``rewardkit annotate up`` in ``data_dir`` > the credentials file.
Token: ``LABEL_STUDIO_API_KEY`` > the credentials file.
Project: an id (int or digits), else a title (default ``rewardkit``), else the id in the state file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rewardkit.annotation.credentials import Credentials, load_credentials
from rewardkit.annotation.errors import AnnotationError, LabelStudioApiError
from rewardkit.annotation.project import DEFAULT_TITLE, connect, find_project
from rewardkit.annotation.server import read_state

DEFAULT_DATA_DIR = Path(".labelstudio")


@dataclass
class Session:
    """A connected client, the server's URL and the project the CLI and pipelines work on."""

    client: object
    url: str
    project_id: int
    state: dict
    project: object = None  # the SDK's project object (title, maximum_annotations, ...)

    @property
    def annotators_per_task(self) -> int | None:
        """The project's overlap: annotations wanted per task (Label Studio's ``maximum_annotations``)."""
        v = getattr(self.project, "maximum_annotations", None)
        return int(v) if isinstance(v, int) else None

    @property
    def document_root(self) -> str | None:
        return self.state.get("document_root")


def resolve_url(url: str | None, data_dir: str | Path, creds: Credentials) -> tuple[str, dict]:
    state = read_state(data_dir) or {}
    resolved = url or os.environ.get("LABEL_STUDIO_URL") or state.get("url") or creds.url
    if not resolved:
        raise AnnotationError(
            f"no Label Studio URL: pass --url, set LABEL_STUDIO_URL, or start a server with `rewardkit annotate up` (state in {data_dir})"
        )
    return resolved.rstrip("/"), state


def open_session(
    *,
    url: str | None = None,
    project: str | int | None = None,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    credentials: str | Path | None = None,
) -> Session:
    from label_studio_sdk.core.api_error import ApiError

    creds = load_credentials(credentials)
    resolved, state = resolve_url(url, data_dir, creds)
    client = connect(resolved, creds.token)
    pid: int | None = None
    try:
        if isinstance(project, int) or (isinstance(project, str) and project.isdigit()):
            pid = int(project)
        elif project:
            p = find_project(client, str(project))
            if p is None:
                raise AnnotationError(f"no project titled {project!r} on {resolved}; create it with `rewardkit annotate up`")
            pid = int(p.id)
        elif state.get("project_id") and state.get("url", "").rstrip("/") == resolved:
            pid = int(state["project_id"])
        else:
            p = find_project(client, DEFAULT_TITLE)
            if p is None:
                raise AnnotationError(f"no project titled {DEFAULT_TITLE!r} on {resolved}; pass --project or run `rewardkit annotate up`")
            pid = int(p.id)
        proj = client.projects.get(id=pid)
    except ApiError as exc:
        if exc.status_code == 404 and pid is not None:
            raise AnnotationError(
                f"no project with id {pid} on {resolved} (HTTP 404); pass --project with an existing id or title, "
                "or run `rewardkit annotate up`"
            ) from None
        raise LabelStudioApiError.from_sdk(exc, f"looking up project {project or pid or DEFAULT_TITLE!r}", resolved) from None
    return Session(client=client, url=resolved, project_id=pid, state=state, project=proj)


def pull_preferences(
    pairs: pl.DataFrame,
    *,
    url: str | None = None,
    project: str | int | None = None,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    credentials: str | Path | None = None,
) -> pl.DataFrame:
    """The project's annotations as a preferences table (skips are counted and printed to stderr)."""
    import sys

    from rewardkit.annotation.pull import pull

    s = open_session(url=url, project=project, data_dir=data_dir, credentials=credentials)
    result, _ = pull(s.client, s.project_id, pairs)
    if result.skipped or result.warnings:
        print(f"  pull: {result.summary()}; skipped {result.skipped}", file=sys.stderr)
        for p in result.problems[:20] + result.warnings[:20]:
            print(f"    {p}", file=sys.stderr)
    return result.preferences
