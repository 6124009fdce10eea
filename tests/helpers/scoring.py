"""Shared helpers for the scoring tests: tiny real scorers (random-init ``rk-tiny`` stage models, 64 px
renders, orbit4) exported once per test session, small meshes, tiny open_clip weights in the CLIP and
HPS checkpoint formats, and :func:`running`, the scorer service on a real uvicorn server."""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import trimesh

RENDER_SIZE = 64
CAMERA = "orbit4"

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_model(stage: str, seed: int = 0):
    from rewardkit.models import BackboneConfig, StageModelConfig, StageRewardModel

    torch.manual_seed(seed)
    model = StageRewardModel(StageModelConfig(stage=stage, backbone=BackboneConfig("rk-tiny")))
    # give the (zero-initialised) quality head some weight so both score terms matter
    with torch.no_grad():
        for p in model.quality.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def tiny_scorer(stage: str, seed: int = 0):
    from rewardkit.scoring import Scorer

    return Scorer(tiny_model(stage, seed), camera=CAMERA, render_size=RENDER_SIZE,
                  training_data={"pairs": 12, "prompts": 3, "source": "synthetic"},
                  metrics={"val_accuracy": 0.75, "val_pairs": 4})


@lru_cache(maxsize=None)
def scorer_set_dir() -> Path:
    """A ScorerSet directory (global + local) written once per session."""
    from rewardkit.scoring import ScorerSet

    root = Path(tempfile.mkdtemp(prefix="rk-test-scorers-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    ScorerSet(global_scorer=tiny_scorer("global", 1), local_scorer=tiny_scorer("local", 2)).save_pretrained(root / "set")
    return root / "set"


def colored_box(color=(200, 30, 30), extents=(0.8, 0.5, 0.4)) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=extents)
    m.visual.face_colors = np.array([*color, 255], dtype=np.uint8)
    return m


@lru_cache(maxsize=None)
def mesh_files() -> dict[str, Path]:
    """A few small mesh files: red box (GLB), blue sphere (GLB), grey cone (OBJ) and a broken GLB."""
    root = Path(tempfile.mkdtemp(prefix="rk-test-meshes-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = {}
    red = colored_box()
    red.export(root / "red_box.glb")
    out["red_box"] = root / "red_box.glb"
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    sphere.visual.face_colors = np.array([30, 40, 210, 255], dtype=np.uint8)
    sphere.export(root / "blue_sphere.glb")
    out["blue_sphere"] = root / "blue_sphere.glb"
    trimesh.creation.cone(radius=0.4, height=0.9, sections=24).export(root / "cone.obj")
    out["cone"] = root / "cone.obj"
    (root / "broken.glb").write_bytes(b"glTF this is not a real glb file")
    out["broken"] = root / "broken.glb"
    return out


def write_tiny_clip_weights(root: Path) -> dict[str, Path]:
    """Tiny open_clip weights in the formats the baselines read: an open_clip state dict in safetensors
    (HF ``open_clip_model.safetensors``), and HPS's ``{'state_dict': sd}`` torch file; plus the JSON config."""
    import open_clip
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "rk-test-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(123)
    model = open_clip.create_model("rk-test-clip", pretrained=None)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(root / "open_clip_model.safetensors"))
    torch.save({"state_dict": sd}, root / "HPS_v2.1_compressed.pt")
    return {"config": cfg_path, "clip": root / "open_clip_model.safetensors", "hps": root / "HPS_v2.1_compressed.pt",
            "model": model}


@contextmanager
def running(app):
    """The app on a real uvicorn server (with the service's connection-level limits), 127.0.0.1, a free port:
    yields ``(url, port)``."""
    import uvicorn

    from rewardkit.scoring.service import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()
