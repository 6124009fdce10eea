"""Label Studio credentials: from environment variables or a local untracked file, never from the repo.

Lookup, first hit wins per field:

1. environment: ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY`` (the API token),
   ``LABEL_STUDIO_USERNAME`` (an e-mail address), ``LABEL_STUDIO_PASSWORD``;
2. the credentials file: ``$REWARDKIT_LS_CREDENTIALS`` or ``./.rewardkit-credentials.json``
   (ignored by git through ``.rewardkit-credentials*``; written with mode 0600).

Secrets never appear in ``repr``/``str`` output, logs or command lines: ``rewardkit annotate up``
passes them to the server through its environment and prints only where they are stored.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_FILE = ".rewardkit-credentials.json"
DEFAULT_USERNAME = "admin@example.com"
ENV = {"url": "LABEL_STUDIO_URL", "token": "LABEL_STUDIO_API_KEY", "username": "LABEL_STUDIO_USERNAME", "password": "LABEL_STUDIO_PASSWORD"}


@dataclass
class Credentials:
    """How to reach and log in to a Label Studio server (URL, user, password or API token); secrets are
    never shown in ``str``/``repr``."""
    url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never show secrets
        return f"Credentials(url={self.url!r}, username={self.username!r}, password={'***' if self.password else None}, token={'***' if self.token else None})"

    __repr__ = __str__

    def with_defaults(self) -> "Credentials":
        """Fill missing username/password/token with a default user and fresh random secrets."""
        return replace(
            self,
            username=self.username or DEFAULT_USERNAME,
            password=self.password or secrets.token_urlsafe(18),
            token=self.token or secrets.token_hex(20),  # 40 chars: fits Label Studio's token column
        )


def credentials_path(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("REWARDKIT_LS_CREDENTIALS", DEFAULT_FILE))


def load_credentials(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Credentials:
    """Credentials from the environment, falling back to the credentials file field by field."""
    env = os.environ if env is None else env
    stored: dict[str, str] = {}
    p = credentials_path(path)
    if p.is_file():
        try:
            stored = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: unreadable credentials file ({exc.__class__.__name__})") from None
    values = {k: (env.get(var) or stored.get(k) or None) for k, var in ENV.items()}
    return Credentials(**values)


def save_credentials(creds: Credentials, path: str | Path | None = None) -> Path:
    """Write the credentials file with mode 0600 (owner read/write only).

    The secret is written to a new temporary file created with mode 0600 in the same folder (``O_CREAT |
    O_EXCL``, so no other file is reused), synced to disk and then renamed over the target: an existing file
    with wider permissions is replaced, never rewritten in place, and no reader ever sees a half-written
    file. A target that is a symbolic link (or not a regular file) is refused with a ``ValueError``:
    nothing is written through the link.
    """
    p = credentials_path(path)
    if p.is_symlink():
        raise ValueError(f"{p}: is a symbolic link; refusing to write credentials through it "
                         "(remove the link or choose another file with REWARDKIT_LS_CREDENTIALS)")
    if p.exists() and not p.is_file():
        raise ValueError(f"{p}: exists and is not a regular file; refusing to write credentials there")
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {k: getattr(creds, k) for k in ENV if getattr(creds, k)}
    tmp = p.parent / f".{p.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only narrow the mode; make it exactly 0600
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)  # rename: replaces the directory entry, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    return p
