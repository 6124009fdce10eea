"""The Label Studio project: connect, create or update it with the label config, register storage.

Everything goes through ``label-studio-sdk`` 2.x (``LabelStudio`` client). A project is found by
title; running ``ensure_project`` again updates its label config and settings in place.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from rewardkit.annotation.errors import AnnotationError, AuthError
from rewardkit.annotation.server import check_reachable, check_token

DEFAULT_TITLE = "rewardkit"
RESOURCES = "rewardkit.annotation.resources"  # package data: the default labeling config and guidelines


def _packaged(name: str) -> Path:
    """A file shipped inside the package (works from a wheel install; no checkout needed)."""
    from importlib.resources import files

    return Path(str(files(RESOURCES) / name))


def default_label_config_path() -> Path:
    """``annotation/label_config.xml`` of the working directory (a project's own copy), else the labeling
    config shipped in the package (``rewardkit/annotation/resources/``, the same file as the checkout's
    ``annotation/label_config.xml``)."""
    p = Path.cwd() / "annotation" / "label_config.xml"
    if p.is_file():
        return p
    p = _packaged("label_config.xml")
    if p.is_file():
        return p
    raise FileNotFoundError("annotation/label_config.xml not found (nor the packaged copy); pass --label-config")


def default_guidelines_path() -> Path | None:
    """``annotation/guidelines.md`` of the working directory, else the packaged guidelines."""
    for p in (Path.cwd() / "annotation" / "guidelines.md", _packaged("guidelines.md")):
        if p.is_file():
            return p
    return None


def guidelines_html(markdown_text: str) -> str:
    """Guidelines for Label Studio's "Instructions" panel (HTML)."""
    try:
        import markdown  # optional; present in most environments

        return markdown.markdown(markdown_text, extensions=["tables"])
    except Exception:  # plain fallback
        return "<pre style='white-space:pre-wrap'>" + html.escape(markdown_text) + "</pre>"


def connect(url: str, token: str | None, *, timeout: float = 60.0):
    """A ``label_studio_sdk.LabelStudio`` client for ``url``, after checking that the server answers
    (``ServerUnreachable`` names the URL) and accepts the token (``AuthError``)."""
    from label_studio_sdk import LabelStudio

    check_reachable(url)
    check_token(url, token)
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=timeout)


@dataclass
class ProjectInfo:
    """The Label Studio project ``ensure_project`` found or created: its id, title and whether it was new."""
    id: int
    title: str
    created: bool


def find_project(client, title: str):
    for p in client.projects.list(title=title):
        if p.title == title:
            return p
    return None


def ensure_project(
    client,
    label_config: str,
    *,
    title: str = DEFAULT_TITLE,
    description: str = "Pairwise comparison of generated 3D candidates (global structure, local texture and detail).",
    guidelines: str | None = None,
    annotators_per_task: int = 1,
) -> ProjectInfo:
    """Create the project, or update the existing one of the same title (label config, guidelines,
    how many annotators label each task)."""
    from label_studio_sdk.core.api_error import ApiError

    settings = dict(
        description=description,
        label_config=label_config,
        maximum_annotations=int(annotators_per_task),
        show_skip_button=True,
        show_instruction=bool(guidelines),
        expert_instruction=guidelines_html(guidelines) if guidelines else "",
    )
    existing = find_project(client, title)
    try:
        if existing is None:
            p = client.projects.create(title=title, **settings)
            return ProjectInfo(id=int(p.id), title=title, created=True)
        client.projects.update(id=existing.id, **settings)
        return ProjectInfo(id=int(existing.id), title=title, created=False)
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise AuthError(f"Label Studio refused to create/update project {title!r} (HTTP {exc.status_code})") from None
        raise AnnotationError(f"Label Studio rejected project {title!r}: HTTP {exc.status_code}: {exc.body}") from None


def relative_to_root(path: str | Path, document_root: str | Path) -> str:
    """``path`` relative to the local-files document root (POSIX separators); raise if outside."""
    p, root = Path(path).resolve(), Path(document_root).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        raise AnnotationError(
            f"{p} is not under the local-files document root {root}; Label Studio can only serve files "
            "inside it (start the server with --document-root set to a parent folder)"
        ) from None


def ensure_local_storage(client, project_id: int, path: str | Path, document_root: str | Path, *, title: str = "renders"):
    """Register ``path`` (a folder under ``document_root``, not the root itself) as a local-files
    source storage of the project, once. It is never synced: tasks reference files by URL."""
    p = Path(path).resolve()
    rel = relative_to_root(p, document_root)
    if rel in ("", "."):
        raise AnnotationError(
            f"local-files storage path {p} equals the document root; Label Studio needs a subfolder "
            "(put renders in e.g. <root>/renders)"
        )
    for st in client.import_storage.local.list(project=project_id):
        if st.path and Path(st.path).resolve() == p:
            return st
    return client.import_storage.local.create(project=project_id, path=str(p), title=title, use_blob_urls=False)


def local_files_url(path: str | Path, document_root: str | Path) -> str:
    """The URL Label Studio serves ``path`` under: ``/data/local-files/?d=<relative path>``."""
    from urllib.parse import quote

    return "/data/local-files/?d=" + quote(relative_to_root(path, document_root), safe="/")
