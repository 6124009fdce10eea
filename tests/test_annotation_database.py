"""`rewardkit annotate up --database`: the PostgreSQL URL becomes Label Studio's settings, the password is
never shown, bad URLs are one-line errors (the server itself on PostgreSQL: tests/test_labelstudio_postgres.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rewardkit.annotation.database import DatabaseURLError, PostgresDatabase
from rewardkit.annotation.server import ServerConfig, LabelStudioServer


def test_url_maps_to_label_studio_settings_and_hides_the_password():
    db = PostgresDatabase.from_url("postgresql://ann%40lab:p%40ss:w@db.lab:6543/label_studio?sslmode=require", env={})
    assert (db.user, db.password, db.host, db.port, db.name, db.sslmode) == (
        "ann@lab", "p@ss:w", "db.lab", 6543, "label_studio", "require")
    assert "p@ss" not in repr(db) and "p@ss" not in db.redacted()
    assert db.redacted() == "postgresql://ann%40lab@db.lab:6543/label_studio?sslmode=require"
    # the host's own Label Studio database settings, under any of the names it reads, give way to the URL's
    base = {"PATH": "/bin", "LABEL_STUDIO_DJANGO_DB": "sqlite", "HEARTEX_POSTGRE_PASSWORD": "old",
            "POSTGRE_HOST": "elsewhere", "DATABASE_NAME": "/tmp/x.sqlite3"}
    env = db.server_env(base)
    assert env == {"PATH": "/bin", "DJANGO_DB": "default", "POSTGRE_NAME": "label_studio", "POSTGRE_USER": "ann@lab",
                   "POSTGRE_PASSWORD": "p@ss:w", "POSTGRE_HOST": "db.lab", "POSTGRE_PORT": "6543", "PGSSLMODE": "require"}
    # defaults, postgres:// and the password from PGPASSWORD
    db = PostgresDatabase.from_url("postgres://rk@localhost/ls", env={"PGPASSWORD": "from-env"})
    assert (db.port, db.password, db.sslmode) == (5432, "from-env", None)
    # the server process gets it in its environment, not on its command line
    server = LabelStudioServer(ServerConfig(username="a@b.c", password="x", database=db))
    assert server._env()["POSTGRE_PASSWORD"] == "from-env" and server._env()["DJANGO_DB"] == "default"
    assert "from-env" not in repr(server.config)


@pytest.mark.parametrize("url, message", [
    ("mysql://u:secret@h/db", "expected postgresql://"),
    ("postgresql://u:secret@h:port/db", "Port could not be cast"),
    ("postgresql://u:secret@h/", "name the database"),
    ("postgresql://h/db", "name the user"),
    ("postgresql://u:secret@h/db?sslmode=sometimes", "sslmode must be one of"),
    ("postgresql://u:secret@h/db?connect_timeout=3", "unsupported parameter(s) connect_timeout"),
])
def test_bad_urls_are_named_without_their_password(url, message):
    with pytest.raises(DatabaseURLError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        PostgresDatabase.from_url(url, env={})
    assert "secret" not in str(exc.value)


def test_up_with_a_bad_database_url_is_a_one_line_error(tmp_path):
    from rewardkit.cli import main

    (tmp_path / "renders").mkdir()
    r = CliRunner().invoke(main, ["annotate", "up", "--renders", str(tmp_path / "renders"), "--data-dir",
                                  str(tmp_path / "ls"), "--credentials", str(tmp_path / "c.json")],
                           env={"REWARDKIT_LS_DATABASE": "mysql://u:secret@h/db"})
    assert r.exit_code == 2, r.output
    assert "expected postgresql://" in r.output and "secret" not in r.output and "Traceback" not in r.output
    # an unreachable database: said before Label Studio is started
    from rewardkit.annotation.server import find_free_port

    r = CliRunner().invoke(main, ["annotate", "up", "--renders", str(tmp_path / "renders"), "--data-dir",
                                  str(tmp_path / "ls"), "--credentials", str(tmp_path / "c.json"), "--database",
                                  f"postgresql://u:secret@127.0.0.1:{find_free_port()}/db"])
    assert r.exit_code == 2, r.output
    assert "PostgreSQL at 127.0.0.1:" in r.output and "unreachable" in r.output and "secret" not in r.output
