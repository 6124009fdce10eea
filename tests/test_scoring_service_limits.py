"""Hostile and careless requests against the real scorer service (uvicorn on 127.0.0.1, a free port): every
client error is a JSON 4xx, limits are checked before their cost is paid, decoding stays off the event loop,
slow clients are cut off, the optional shared token, and the server's memory under the worst allowed load."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest
import torch

from helpers.scoring import RENDER_SIZE, running, scorer_set_dir

from rewardkit.scoring import load_scorer
from rewardkit.scoring.client import ScorerClient, ScorerServiceError
from rewardkit.scoring.service import ServiceLimits, create_app, exposure_warning, read_token

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def scorers():
    return load_scorer(scorer_set_dir())


SMALL = dict(max_request_bytes=2_000_000, max_items=8, max_views=8, max_image_side=128, max_modes=3,
             max_item_pixels=16 * 64 * 64, max_request_pixels=40 * 64 * 64, max_mesh_bytes=1_000_000)


@pytest.fixture(scope="module")
def small(scorers):
    with running(create_app(scorers, limits=ServiceLimits(**SMALL))) as (url, port):
        yield url, port


def _png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def _views(n: int = 4, size: int = RENDER_SIZE, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _lying_png(width: int, height: int) -> str:
    """A PNG whose header says width x height and whose pixel data is garbage: decoding it fails, so an
    answer other than 400 proves the size was judged from the header alone."""
    good = base64.b64decode(_png(np.zeros((2, 2, 3), np.uint8)))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)  # noqa: E731
    raw = good[:8] + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib data at all") + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def _assert_json_4xx(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    for w in words:
        assert w in detail, detail


# ------------------------------------------------------------------------------------------------------ #
def test_every_request_error_is_a_json_4xx(small):
    url, _ = small
    v = _views()
    post = lambda body, **kw: httpx.post(url + "/score", json=body, timeout=30, **kw)  # noqa: E731
    _assert_json_4xx(post({"prompt": "x", "views": v, "scorers": 123}), 422, "'scorers'")  # was a plain-text 500
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": v}, "scorers": 123}), 422, "'scorers'")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": v}, "scorers": [1, 2]}), 422, "'scorers'")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": v}, "scorers": []}), 422, "'scorers'")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": v}, "per_view": "yes"}), 422, "per_view")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": v}, "prompts": "y"}), 422, "unknown keys ['prompts']")
    _assert_json_4xx(post({"prompt": "x"}), 422, "'views' is missing")
    _assert_json_4xx(post({"views": {"rgb": v}}), 422, "'prompt' is missing")
    _assert_json_4xx(post({"prompt": 5, "views": {"rgb": v}}), 422, "prompt")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": "abc"}}), 422, "non-empty list")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": [123]}}), 422, "base64 string")
    _assert_json_4xx(post({"prompt": "x", "views": 7}), 422, "'views'")
    _assert_json_4xx(post([1, 2]), 422, "JSON object")
    _assert_json_4xx(post({"items": "abc"}), 422, "'items'")
    _assert_json_4xx(post({"items": [1]}), 422, "items[0]")
    _assert_json_4xx(post({"items": [{"prompt": "x", "views": {"rgb": v}}], "per_view": True}), 422, "unknown keys")
    _assert_json_4xx(post({"items": [{"prompt": "x", "views": {"rgb": v}}, {"prompt": "y", "views": {"rgb": v},
                                                                         "scorers": {"a": 1}}]}), 422, "items[1]")
    _assert_json_4xx(httpx.post(url + "/score", content=b'{"prompt": ', headers={"content-type": "application/json"}),
                     400, "not valid JSON")
    _assert_json_4xx(httpx.post(url + "/score", content=b"[" * 100_000, headers={"content-type": "application/json"}),
                     400, "not valid JSON")
    _assert_json_4xx(httpx.post(url + "/score", content=b"{}", headers={"content-type": "text/plain"}), 415)
    # malformed HTTP (here a bad Content-Length, rejected by the HTTP parser itself): JSON too
    s = _raw(small[1])
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}")
    data, _ = _read_until_closed(s, 5)
    s.close()
    assert data.startswith(b"HTTP/1.1 400") and b"application/json" in data
    assert "invalid HTTP request" in json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]
    # and a good request still works
    r = post({"prompt": "x", "views": {"rgb": v}})
    assert r.status_code == 200 and set(r.json()["scores"]) == {"local"}


def test_mode_view_and_pixel_limits_are_checked_before_decoding(small):
    url, _ = small
    v = _views()
    post = lambda body: httpx.post(url + "/score", json=body, timeout=30)  # noqa: E731
    # any number of mode keys was accepted (and every one decoded)
    _assert_json_4xx(post({"prompt": "x", "views": {f"m{i}": v for i in range(3)} | {"rgb": v}}), 422,
                     "4 render modes", "max_modes")
    # a mode no selected scorer uses is not decoded at all (its garbage costs nothing)
    r = post({"prompt": "x", "views": {"rgb": v, "normal": [_lying_png(64, 64)]}})
    assert r.status_code == 200 and set(r.json()["scores"]) == {"local"}
    # sizes come from the header: these PNGs cannot be decoded, yet the answer is the size limit, not 400
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": [_lying_png(4000, 4000)]}}), 413, "4000x4000",
                     "max_image_side")
    _assert_json_4xx(post({"prompt": "x", "views": {"rgb": [_lying_png(128, 128)] * 5}}), 413, "max_item_pixels")
    # the request's pixel total is summed over every item before the first one is decoded
    item = {"prompt": "x", "views": {"rgb": [_lying_png(64, 64)] * 8}}  # 8 x 64² each: under the item limit
    _assert_json_4xx(post({"items": [item] * 6}), 413, "max_request_pixels")
    r = post({"items": [{"prompt": "x", "views": {"rgb": [_lying_png(64, 64)]}}]})
    _assert_json_4xx(r, 400, "cannot decode image")  # only once everything is within the limits is it decoded


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_until_closed(s: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit_s`` passes): (data, seconds until closed)."""
    t0, data = time.monotonic(), b""
    s.settimeout(0.2)
    while time.monotonic() - t0 < limit_s:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - t0
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk
    return data, float("inf")


def test_oversize_chunked_bodies_answer_413_without_being_read(small):
    url, port = small
    boundary = b"rkboundary"
    for path, ctype, head in (
        ("/score_mesh", b"multipart/form-data; boundary=" + boundary,
         b"--" + boundary + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--' + boundary +
         b'\r\nContent-Disposition: form-data; name="file"; filename="m.glb"\r\n\r\n'),
        ("/score", b"application/json", b'{"prompt": "x", "views": {"rgb": ["'),
    ):
        s = _raw(port)
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype +
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            payload = head + b"A" * 65536
            while sent < 3_000_000:  # the limit is 2 MB; stop a little past it (no unbounded loop)
                s.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n")
                sent += len(payload)
                payload = b"A" * 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed_after = _read_until_closed(s, 10)
        s.close()
        assert data.startswith(b"HTTP/1.1 413"), (path, data[:200])
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert "max_request_bytes" in body["detail"]
        assert closed_after < 10
    # Content-Length over the limit: refused from the header, before any of the body
    s = _raw(port)
    s.sendall(b"POST /score_mesh HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
              b"Content-Length: 100000000\r\n\r\n")
    data, _ = _read_until_closed(s, 10)
    s.close()
    assert data.startswith(b"HTTP/1.1 413") and b"100000000 bytes" in data
    assert httpx.get(url + "/health").status_code == 200


def test_slow_clients_are_cut_off_and_do_not_starve_the_service(scorers):
    """11 connections that never finish their headers (one of them trickling a byte at a time), and 2 that
    never finish their body: the server answers 408 and closes each after its timeout, and serves /health and
    /score meanwhile."""
    limits = ServiceLimits(header_timeout_s=1.0, body_timeout_s=1.5, max_concurrent_requests=4)
    with running(create_app(scorers, limits=limits)) as (url, port):
        partial_headers = []
        for _ in range(11):
            s = _raw(port)
            s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            partial_headers.append(s)
        partial_bodies = []
        for _ in range(2):
            s = _raw(port)
            s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10000\r\n\r\n{\"prompt\": ")
            partial_bodies.append(s)
        t0 = time.monotonic()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        health_s = time.monotonic() - t0
        r = httpx.post(url + "/score", json={"prompt": "x", "views": {"rgb": _views()}}, timeout=10)
        score_s = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert health_s < 0.5 and score_s < 1.0, (health_s, score_s)
        # trickling does not restart the header clock
        trickler = partial_headers[0]
        try:
            for _ in range(8):
                trickler.sendall(b"x")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed = []
        for s in partial_headers + partial_bodies:
            data, _after = _read_until_closed(s, 8)
            closed.append((time.monotonic() - t0, data[:12]))
            s.close()
        print(f"\n/health {health_s * 1000:.0f} ms and /score {score_s * 1000:.0f} ms while 13 slow connections "
              f"were open; closed after {[round(c[0], 2) for c in closed]} s")
        for when, head in closed[:11]:
            assert head == b"HTTP/1.1 408" and when < 4.0, (when, head)
        for when, head in closed[11:]:
            assert head == b"HTTP/1.1 408" and when < 4.0, (when, head)
        assert httpx.get(url + "/health", timeout=5).status_code == 200


def _worst_body(seed: int = 0) -> bytes:
    """The largest request the default limits allow: 8 items x 4 views of 1024² (33.5 M pixels), 14 of them
    incompressible (~59 MB of JSON, just under max_request_bytes)."""
    rng = np.random.default_rng(seed)

    def noise_png() -> str:
        buf = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(buf, format="PNG",
                                                                                       compress_level=0)
        return base64.b64encode(buf.getvalue()).decode()

    noise = [noise_png() for _ in range(3)]
    zeros = _png(np.zeros((1024, 1024, 3), np.uint8))
    views = [noise[i % 3] for i in range(14)] + [zeros] * 18
    body = json.dumps({"items": [{"prompt": "a chair", "views": {"geometry": views[i * 4:(i + 1) * 4]}}
                                 for i in range(8)]}).encode()
    limits = ServiceLimits()
    assert len(body) <= limits.max_request_bytes and 32 * 1024 * 1024 <= limits.max_request_pixels
    return body


def test_health_answers_while_a_large_request_is_decoded(scorers):
    """JSON parsing and decoding run off the event loop: /health answers promptly while the largest request
    the default limits allow (~59 MB of JSON, 33.5 M pixels) is parsed, decoded and scored."""
    body = _worst_body()
    with running(create_app(scorers)) as (url, _):
        latencies: list[float] = []
        done = threading.Event()

        def big():
            try:
                return httpx.post(url + "/score", content=body, headers={"content-type": "application/json"},
                                  timeout=120)
            finally:
                done.set()

        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(big)
            t_start = time.monotonic()
            while not done.is_set() and time.monotonic() - t_start < 120:
                t0 = time.monotonic()
                assert httpx.get(url + "/health", timeout=10).status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
            r = fut.result()
        took = time.monotonic() - t_start
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["results"]) == 8
        print(f"\nbig request {took:.2f} s; /health x{len(latencies)} during it: max {max(latencies) * 1000:.0f} ms, "
              f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms")
        assert took > 0.5 and len(latencies) >= 3, "the request was too quick to tell"
        assert max(latencies) < 0.5, latencies


def test_token_and_health_without_paths(scorers, monkeypatch):
    monkeypatch.delenv("REWARDKIT_SERVICE_TOKEN", raising=False)
    with running(create_app(scorers, token=TOKEN)) as (url, _):
        h = httpx.get(url + "/health")
        assert h.status_code == 200 and h.json()["token_required"] is True
        assert set(h.json()["scorers"]) == {"global", "local"}
        assert h.json()["scorers"]["global"]["kind"] == "stage-model"
        assert str(scorer_set_dir()) not in h.text and "source" not in h.json()["scorers"]["global"]
        body = {"prompt": "x", "views": {"rgb": _views()}}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            _assert_json_4xx(httpx.post(url + "/score", json=body, headers=headers), 401, "token")
        _assert_json_4xx(httpx.get(url + "/openapi.json"), 401)
        _assert_json_4xx(httpx.post(url + "/score_mesh", files={"file": ("m.glb", b"x")}, data={"prompt": "x"}), 401)
        ok = httpx.post(url + "/score", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        with ScorerClient(url, retries=0) as c:
            with pytest.raises(ScorerServiceError) as exc:
                c.score_views("x", {"rgb": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)})
            assert exc.value.status == 401
        with ScorerClient(url, token=TOKEN) as c:
            assert set(c.score_views("x", {"rgb": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)})["scores"]) == {"local"}
        # the RL adapters' url= mode goes through the client, which reads the token from the environment
        from rewardkit.scoring import adapters

        monkeypatch.setenv("REWARDKIT_SERVICE_TOKEN", TOKEN)
        with ScorerClient(url) as c:
            assert c.score_views("x", {"rgb": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)})["scores"]
        assert adapters.make_backend(url=url).names() == ["global", "local"]
    # without a token the service has no auth (and says so)
    with running(create_app(scorers)) as (url, _):
        assert httpx.get(url + "/health").json()["token_required"] is False
        assert httpx.post(url + "/score", json={"prompt": "x", "views": {"rgb": _views()}}).status_code == 200


def test_token_file_and_exposure_warning(tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main

    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert read_token(f, env={}) == TOKEN
    assert read_token(None, env={"REWARDKIT_SERVICE_TOKEN": TOKEN}) == TOKEN
    assert read_token(None, env={}) is None
    f.write_text("short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_token(f)
    with pytest.raises(ValueError, match="cannot read the token file"):
        read_token(tmp_path / "absent")
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None and exposure_warning("0.0.0.0", TOKEN) is None
    assert "without a token" in exposure_warning("0.0.0.0", None)
    res = CliRunner().invoke(main, ["serve", "--scorer", str(tmp_path), "--token-file", str(f)])
    assert res.exit_code == 2 and "at least 16 characters" in res.output
    res = CliRunner().invoke(main, ["serve", "--scorer", str(tmp_path), "--max-concurrent", "0"])
    assert res.exit_code == 2 and "max_concurrent_requests must be a positive number" in res.output


# ------------------------------------------------------------------------------------------------------ #
def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


RSS_BOUND_MB = 2048  # the whole server process (idle: ~1.1 GB here, torch and the scorers)
GROWTH_BOUND_MB = 1024  # what the worst allowed requests may add to it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_server_memory_stays_bounded_under_the_worst_allowed_requests(tmp_path):
    """The service with its DEFAULT limits, in its own process: 6 concurrent requests (3 more than
    max_concurrent_requests), each at the pixel limit (8 items x 4 views of 1024², 33.5 M pixels) and near the
    body limit (14 incompressible views, ~59 MB of JSON), twice. The peak RSS (VmHWM) stays under 2 GB and
    the requests add less than 1 GB to the idle server."""
    code = (
        "import socket, uvicorn\n"
        "from rewardkit.scoring.service import create_app, server_config\n"
        f"app = create_app({str(scorer_set_dir())!r}, device='cpu')\n"
        "sock = socket.socket(); sock.bind(('127.0.0.1', 0)); print(sock.getsockname()[1], flush=True)\n"
        "uvicorn.Server(server_config(app, log_level='warning')).run(sockets=[sock])\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        idle_mb = _vm_hwm_mb(proc.pid)
        body = _worst_body()

        def send(_):
            return httpx.post(url + "/score", content=body, headers={"content-type": "application/json"},
                              timeout=300).status_code

        t0 = time.monotonic()
        for _ in range(2):
            with ThreadPoolExecutor(6) as pool:
                assert list(pool.map(send, range(6))) == [200] * 6
        peak_mb = _vm_hwm_mb(proc.pid)
        print(f"\nserver RSS: idle {idle_mb:.0f} MB, peak {peak_mb:.0f} MB (VmHWM) over 12 worst-case requests "
              f"of {len(body) / 1e6:.1f} MB / 33.5 M px each ({time.monotonic() - t0:.1f} s)")
        assert peak_mb < RSS_BOUND_MB, f"peak RSS {peak_mb:.0f} MB over the {RSS_BOUND_MB} MB bound"
        assert peak_mb - idle_mb < GROWTH_BOUND_MB, f"the requests added {peak_mb - idle_mb:.0f} MB"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_decode_image_round_trips_encode_png():
    """The wire format's one-image decoder (ruff's F821 found it naming torch without importing it)."""
    from rewardkit.scoring.wire import decode_image, encode_png

    img = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = decode_image(encode_png(img), ServiceLimits(), "views['rgb'][0]")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img)
