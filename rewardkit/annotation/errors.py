"""Errors of the annotation layer; each message says what to do next."""

from __future__ import annotations

from rewardkit.errors import RewardkitError


class AnnotationError(RewardkitError, RuntimeError):
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


class LabelStudioApiError(AnnotationError):
    """Label Studio answered an API call with an HTTP error; the message has the status and the server's
    detail on one line (``status_code`` keeps the status)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)

    @classmethod
    def from_sdk(cls, exc: Exception, doing: str = "", url: str | None = None) -> "LabelStudioApiError":
        """From ``label_studio_sdk``'s ``ApiError`` (``status_code``, ``body``)."""
        code = getattr(exc, "status_code", None)
        detail = api_error_detail(getattr(exc, "body", None))
        msg = f"Label Studio{f' at {url}' if url else ''} answered HTTP {code}"
        if doing:
            msg += f" while {doing}"
        if detail:
            msg += f": {detail}"
        hint = {401: "check LABEL_STUDIO_API_KEY or the credentials file (--credentials)",
                403: "this user may not do that; use the admin's token (LABEL_STUDIO_API_KEY or the credentials file)",
                404: "check --project (an id or a title on this server) and --url"}.get(code)
        if hint:
            msg += f" ({hint})"
        return cls(msg, code)


def api_error_detail(body, limit: int = 600) -> str:
    """The server's explanation in an error body, on one line: ``detail``, else ``validation_errors``,
    else the body itself."""
    import json

    if isinstance(body, dict):
        parts = [body[k] for k in ("detail", "validation_errors", "message", "error") if body.get(k)]
        if parts:
            body = ": ".join(p if isinstance(p, str) else _flat(p) for p in parts)
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    if not isinstance(body, str):
        try:
            body = json.dumps(body, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            body = str(body)
    if body in ("null", "None", ""):
        return ""
    line = " ".join(body.split())
    if line.lstrip().lower().startswith(("<!doctype", "<html")):
        return "(an HTML error page)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _flat(v) -> str:
    """``{"path": ["must start with ..."]}`` -> ``path: must start with ...``."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_flat(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "; ".join(_flat(x) for x in v)
    return str(v)
