"""Label Studio's database: SQLite in its data folder (the default), or PostgreSQL given as a URL.

``postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME[?sslmode=MODE]`` (``postgres://`` too) becomes Label Studio's
own settings, passed to the server process in its environment: ``DJANGO_DB=default`` and
``POSTGRE_NAME`` / ``POSTGRE_USER`` / ``POSTGRE_PASSWORD`` / ``POSTGRE_HOST`` / ``POSTGRE_PORT`` (and
libpq's ``PGSSLMODE``). A URL without a password takes ``$PGPASSWORD``. The password is never shown:
:meth:`PostgresDatabase.redacted` is what messages and the server state file print.

Label Studio's documentation recommends PostgreSQL beyond about 100k tasks or 5 concurrent annotators; the
database must exist (``createdb``) and the user own it; Label Studio creates its tables at first start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

from rewardkit.annotation.errors import AnnotationError

SCHEMES = ("postgresql", "postgres")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Label Studio reads each setting as LABEL_STUDIO_<name>, HEARTEX_<name> or <name>, in that order.
_LS_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_", "")
_LS_KEYS = ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT",
            "DATABASE_NAME")


class DatabaseURLError(AnnotationError, ValueError):
    """A ``--database`` URL that cannot be used (the message shows it without its password)."""


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database for Label Studio."""

    name: str
    user: str
    password: str = field(default="", repr=False)
    host: str = "localhost"
    port: int = 5432
    sslmode: str | None = None

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> PostgresDatabase:
        env = os.environ if env is None else env
        try:
            parts = urlsplit(url)
            port = parts.port or 5432
        except ValueError as exc:  # a port that is not a number
            raise DatabaseURLError(f"database URL {_redact(url)}: {exc}") from None
        shown = _redact(url)
        if parts.scheme not in SCHEMES:
            raise DatabaseURLError(f"database URL {shown}: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME "
                                   f"(Label Studio keeps SQLite in its data folder when no URL is given)")
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise DatabaseURLError(f"database URL {shown}: name the database (…/NAME)")
        if not parts.username:
            raise DatabaseURLError(f"database URL {shown}: name the user (postgresql://USER@HOST/NAME)")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"sslmode"})
        if unknown:
            raise DatabaseURLError(f"database URL {shown}: unsupported parameter(s) {', '.join(unknown)} (only sslmode)")
        sslmode = query["sslmode"][-1] if "sslmode" in query else None
        if sslmode is not None and sslmode not in SSL_MODES:
            raise DatabaseURLError(f"database URL {shown}: sslmode must be one of {', '.join(SSL_MODES)}")
        password = unquote(parts.password) if parts.password is not None else env.get("PGPASSWORD", "")
        return cls(name=name, user=unquote(parts.username), password=password, host=parts.hostname or "localhost",
                   port=port, sslmode=sslmode)

    def redacted(self) -> str:
        """The URL without its password (for messages, logs and the server state file)."""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(self.name, safe='')}" + (
            f"?sslmode={self.sslmode}" if self.sslmode else "")

    def server_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the server's environment) with Label Studio's database settings replaced by this one's."""
        env = {k: v for k, v in base.items() if not any(k == p + key for p in _LS_PREFIXES for key in _LS_KEYS)}
        env.update({"DJANGO_DB": "default", "POSTGRE_NAME": self.name, "POSTGRE_USER": self.user,
                    "POSTGRE_PASSWORD": self.password, "POSTGRE_HOST": self.host, "POSTGRE_PORT": str(self.port)})
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


__all__ = ["DatabaseURLError", "PostgresDatabase", "SCHEMES", "SSL_MODES"]
