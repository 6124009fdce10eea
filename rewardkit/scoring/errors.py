"""The scoring package's exceptions (the root, :class:`ScoringError`, derives from
:class:`rewardkit.errors.RewardkitError`)."""

from __future__ import annotations

from rewardkit.errors import RewardkitError


class ScoringError(RewardkitError, RuntimeError):
    """Root of the scoring package's errors."""


class ScorerError(ScoringError):
    """A scorer directory is missing, incomplete, malformed, or its weights do not fit its config."""


class ScorerVersionError(ScorerError):
    """A scorer directory was written by a format or rewardkit version this installation cannot load."""


class RequestError(ScoringError):
    """A request the scorer service refuses: ``status`` is the HTTP status, ``detail`` the message sent back."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class ScorerServiceError(ScoringError):
    """The scorer service answered an error (``status``) or could not be reached (``status`` is None)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"scorer service error{f' {status}' if status else ''}: {detail}")
        self.status, self.detail = status, detail


__all__ = ["RequestError", "ScorerError", "ScorerServiceError", "ScorerVersionError", "ScoringError"]
