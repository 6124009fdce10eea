"""Start and stop a real Label Studio server as a subprocess.

The server runs from its own virtual environment (``.venv-ls``: Label Studio pins Django and many
other packages, so it is not a dependency of rewardkit). It binds to the loopback address, keeps its
database and uploads in ``data_dir``, and serves render folders through local-files storage rooted at
``document_root`` (images are referenced, never copied).

Its database is SQLite in ``data_dir`` unless ``ServerConfig.database`` names a PostgreSQL database
(:mod:`rewardkit.annotation.database`; settings passed in the environment, the password never printed).

The first user (an admin) and its API token are created at first start from the credentials, passed
to the process through its environment (``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` /
``LABEL_STUDIO_USER_TOKEN``), never on its command line, so they do not show up in ``ps``.

A running server is described by ``<data_dir>/rewardkit-server.json`` (pid, url; no secrets), which
``rewardkit annotate status|push|pull|down`` read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from rewardkit.annotation.credentials import Credentials
from rewardkit.annotation.database import PostgresDatabase
from rewardkit.annotation.errors import AuthError, ServerStartError, ServerUnreachable

STATE_FILE = "rewardkit-server.json"
LOG_FILE = "server.log"
_PKG_ROOT = Path(__file__).resolve().parents[2]


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_label_studio_bin(explicit: str | Path | None = None) -> Path:
    """The ``label-studio`` executable: explicit path, ``$REWARDKIT_LABEL_STUDIO_BIN``,
    ``./.venv-ls/bin/label-studio``, the repository's ``.venv-ls``, then ``$PATH``."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("REWARDKIT_LABEL_STUDIO_BIN"):
        candidates.append(Path(os.environ["REWARDKIT_LABEL_STUDIO_BIN"]))
    candidates += [Path.cwd() / ".venv-ls" / "bin" / "label-studio", _PKG_ROOT / ".venv-ls" / "bin" / "label-studio"]
    on_path = shutil.which("label-studio")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ServerStartError(
        "label-studio executable not found (looked at: " + ", ".join(str(c) for c in candidates) + "); "
        "install it in its own environment: python -m venv .venv-ls && .venv-ls/bin/pip install label-studio"
    )


@dataclass
class ServerConfig:
    """Where and how to run Label Studio."""

    data_dir: Path = Path(".labelstudio")
    document_root: Path | None = None  # local-files root; render folders must lie under it
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    label_studio_bin: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    startup_timeout_s: float = 180.0
    log_level: str = "WARNING"
    database: PostgresDatabase | None = None  # None: SQLite in data_dir
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_credentials(cls, creds: Credentials, **kw) -> "ServerConfig":
        return cls(username=creds.username, password=creds.password, token=creds.token, **kw)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise ``ServerUnreachable`` (naming ``url``) unless Label Studio's /health answers 200."""
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(url, exc.__class__.__name__ + (f": {exc}" if str(exc) else "")) from None
    if r.status_code != 200:
        raise ServerUnreachable(url, f"/health answered HTTP {r.status_code}")


def check_database_reachable(db: PostgresDatabase, timeout: float = 5.0) -> None:
    """Raise ``ServerStartError`` unless something accepts TCP connections at the database's host and port
    (a clear message before Label Studio's own traceback in its log)."""
    try:
        with socket.create_connection((db.host, db.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ServerStartError(f"PostgreSQL at {db.host}:{db.port} ({db.redacted()}) is unreachable: "
                               f"{exc.__class__.__name__}: {exc}") from None


def check_token(url: str, token: str | None, timeout: float = 10.0) -> dict:
    """Return the current user for ``token``; raise ``AuthError`` if the server rejects it."""
    if not token:
        raise AuthError(f"no API token for {url}: set LABEL_STUDIO_API_KEY or run `rewardkit annotate up`")
    scheme = "Bearer" if token.count(".") == 2 else "Token"  # personal access tokens are JWTs
    headers = {"Authorization": f"{scheme} {token}"}
    if scheme == "Bearer":
        r = httpx.post(url.rstrip("/") + "/api/token/refresh", json={"refresh": token}, timeout=timeout)
        if r.status_code != 200:
            raise AuthError(f"{url} rejected the personal access token (HTTP {r.status_code})")
        headers = {"Authorization": f"Bearer {r.json()['access']}"}
    r = httpx.get(url.rstrip("/") + "/api/current-user/whoami", headers=headers, timeout=timeout)
    if r.status_code in (401, 403):
        raise AuthError(
            f"{url} rejected the API token (HTTP {r.status_code}); if the data directory was created with "
            "other credentials, use those (LABEL_STUDIO_API_KEY / the credentials file) or a fresh --data-dir"
        )
    r.raise_for_status()
    return r.json()


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class LabelStudioServer:
    """A Label Studio server process. Use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, config: ServerConfig, progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.progress = progress  # called with one line per phase of start() (the CLI prints them on stderr)

    def _say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    # -- paths -------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir).resolve()

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def url(self) -> str:
        return self.config.url

    def _env(self) -> dict[str, str]:
        cfg = self.config
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        # never let the host's generic USERNAME/PASSWORD leak into Label Studio's user creation
        env.pop("USERNAME", None)
        env.pop("PASSWORD", None)
        env.update(
            {
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
                "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
                # no error telemetry to Sentry from the server or the labeling page
                "LABEL_STUDIO_SENTRY_DSN": "",
                "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if cfg.document_root is not None:
            env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(Path(cfg.document_root).resolve())
        if cfg.username:
            env["LABEL_STUDIO_USERNAME"] = cfg.username
        if cfg.password:
            env["LABEL_STUDIO_PASSWORD"] = cfg.password
        if cfg.token:
            env["LABEL_STUDIO_USER_TOKEN"] = cfg.token
        if cfg.database is not None:
            env = cfg.database.server_env(env)
        env.update(cfg.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "LabelStudioServer":
        cfg = self.config
        if not (cfg.username and cfg.password):
            raise ServerStartError("ServerConfig needs username and password for the first user")
        if cfg.document_root is not None and not Path(cfg.document_root).is_dir():
            raise ServerStartError(f"document root {cfg.document_root} is not a directory")
        if cfg.database is not None:
            check_database_reachable(cfg.database)
        binary = find_label_studio_bin(cfg.label_studio_bin)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        explicit_port = bool(cfg.port)
        for attempt in range(3):
            if not explicit_port:
                cfg.port = find_free_port(cfg.host)
            try:
                db = cfg.database
                first = db is None and not (self.data_dir / "label_studio.sqlite3").exists()
                self._say(f"starting Label Studio ({binary}) on {cfg.host}:{cfg.port}, data in {self.data_dir}"
                          + (f", database {db.redacted()}" if db else ""))
                self._spawn(binary)
                self._say(f"waiting for Label Studio to answer at {self.url}"
                          + (" (first start: creating its database and the admin user, about a minute)" if first else
                             " (on a new PostgreSQL database it creates its tables first, about a minute)" if db else ""))
                self._wait_healthy()
                break
            except ServerStartError as exc:
                self._kill()
                in_use = "already in use" in str(exc).lower() or "address in use" in str(exc).lower()
                if explicit_port or not in_use or attempt == 2:
                    raise
        self._say(f"Label Studio answers at {self.url}")
        if cfg.token:
            check_token(self.url, cfg.token)
        self._write_state()
        return self

    def _spawn(self, binary: Path) -> None:
        cfg = self.config
        cmd = [
            str(binary), "start", "--no-browser",
            "--internal-host", cfg.host, "--port", str(cfg.port),
            "--data-dir", str(self.data_dir),
            "--log-level", cfg.log_level,
            "--enable-legacy-api-token",
        ]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=str(self.data_dir), start_new_session=True,
            )
        finally:
            log.close()
        self.pid = self.proc.pid

    def _wait_healthy(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.config.startup_timeout_s
        next_note = t0 + 10.0
        assert self.proc is not None
        while time.monotonic() < deadline:
            if time.monotonic() >= next_note:
                self._say(f"  still waiting for {self.url} ({time.monotonic() - t0:.0f} s; log: {self.log_path})")
                next_note += 10.0
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"Label Studio exited with code {self.proc.returncode} before answering at {self.url}; "
                    f"end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"Label Studio did not answer at {self.url} within {self.config.startup_timeout_s:.0f} s; "
            f"end of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def _write_state(self) -> None:
        state = {
            "pid": self.pid,
            "url": self.url,
            "host": self.config.host,
            "port": self.config.port,
            "data_dir": str(self.data_dir),
            "document_root": str(Path(self.config.document_root).resolve()) if self.config.document_root else None,
            "log": str(self.log_path),
            "database": self.config.database.redacted() if self.config.database else None,  # no password
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_state(self.data_dir, state)

    def _kill(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                _terminate_group(self.proc.pid, timeout, wait=self.proc.wait)
            self.proc = None
        elif self.pid is not None and _alive(self.pid):  # detached (start_detached): no Popen handle
            _terminate_group(self.pid, timeout)
        self.pid = None

    def stop(self) -> None:
        self._kill()
        state = self.data_dir / STATE_FILE
        if state.exists():
            state.unlink()

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate_group(pid: int, timeout: float, wait=None) -> None:
    """SIGTERM the process group led by ``pid`` (started with ``start_new_session``), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wait is not None:
            try:
                wait(timeout=0.2)
                return
            except subprocess.TimeoutExpired:
                continue
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists() and ") Z " in stat.read_text():
        return False  # zombie
    return True


def read_state(data_dir: str | Path) -> dict | None:
    """The state file of a server started by ``rewardkit annotate up`` in ``data_dir`` (or None)."""
    p = Path(data_dir) / STATE_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def write_state(data_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``data_dir``'s state file (:data:`STATE_FILE`; creating the folder) -> its path."""
    p = Path(data_dir) / STATE_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(dict(state), indent=2))
    return p


def stop_from_state(data_dir: str | Path, timeout: float = 15.0) -> bool:
    """Stop the server recorded in ``data_dir``'s state file. Returns False if none was running.

    Only a process whose command line is a Label Studio server is signalled (a stale state file whose
    pid was reused by something else is just removed)."""
    state = read_state(data_dir)
    p = Path(data_dir) / STATE_FILE
    if not state:
        return False
    pid = int(state.get("pid") or 0)
    running = False
    if pid and _alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if "label-studio" in cmdline or "label_studio" in cmdline:
            running = True
            _terminate_group(pid, timeout)
    p.unlink(missing_ok=True)
    return running


def start_detached(config: ServerConfig, progress: Callable[[str], None] | None = None) -> LabelStudioServer:
    """Start a server that outlives this Python process (``rewardkit annotate up``); ``progress``
    receives one line per phase (starting, waiting, answering)."""
    server = LabelStudioServer(config, progress=progress)
    server.start()
    # forget the Popen handle so that exiting this process does not wait for or kill the server
    server.proc = None
    return server
