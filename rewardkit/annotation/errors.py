"""Errors of the annotation layer; each message says what to do next."""

from __future__ import annotations


class AnnotationError(RuntimeError):
    """Base class for Label Studio related failures."""


class ServerUnreachable(AnnotationError):
    """No Label Studio answers at the URL (the message names it)."""

    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        msg = f"Label Studio server at {url} is unreachable"
        if reason:
            msg += f" ({reason})"
        msg += "; start it with `rewardkit annotate up` or check --url / LABEL_STUDIO_URL"
        super().__init__(msg)


class ServerStartError(AnnotationError):
    """The Label Studio process did not come up (the message carries the end of its log)."""


class AuthError(AnnotationError):
    """The server rejected the credentials."""


class MissingRenderFiles(AnnotationError, FileNotFoundError):
    """Task creation needs render grids that are not on disk; ``missing`` lists them all."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        shown = "\n  ".join(self.missing[:50])
        more = f"\n  ... and {len(self.missing) - 50} more" if len(self.missing) > 50 else ""
        super().__init__(
            f"{len(self.missing)} render file(s) missing; render the items first (`rewardkit render`):\n  {shown}{more}"
        )
