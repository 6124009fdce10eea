"""The Label Studio credentials file is replaced atomically with mode 0600 and never written through a link."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rewardkit.annotation.credentials import Credentials, load_credentials, save_credentials


def test_existing_world_readable_file_is_replaced_not_rewritten(tmp_path, monkeypatch):
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"url": "http://old"}))
    os.chmod(path, 0o644)
    inode = path.stat().st_ino
    seen = []
    real_replace = os.replace

    def watch(src, dst, *a, **kw):  # observe the moment of the swap (the real os.replace still runs)
        st = os.stat(src)
        seen.append((stat.S_IMODE(st.st_mode), json.loads(open(src).read())["token"], path.read_text()))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", watch)
    save_credentials(Credentials(url="http://new", token="s3cret-token"), path)
    # the secret was only ever in a 0600 file; until the swap the old 0644 file kept its old content
    assert seen == [(0o600, "s3cret-token", json.dumps({"url": "http://old"}))]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode
    assert load_credentials(path, env={}).token == "s3cret-token"
    assert [p.name for p in tmp_path.iterdir()] == ["creds.json"]  # no temp file left behind


def test_symlink_target_is_refused_and_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(victim, 0o644)
    link = tmp_path / "creds.json"
    link.symlink_to(victim)
    with pytest.raises(ValueError, match="creds.json: is a symbolic link"):
        save_credentials(Credentials(url="http://x", token="s3cret"), link)
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="symbolic link"):
        save_credentials(Credentials(token="s3cret"), dangling)
    assert not (tmp_path / "nowhere.json").exists()
