"""Multi-process runs of ``rewardkit rl`` for the distributed tests: the base config of a tiny run, a run under
Fabric's own launcher (``devices: 2``) and a run as two ``torchrun`` nodes rendezvousing over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rl_config(tmp_path: Path, **overrides: Any) -> dict:
    """A 2-process CPU (gloo) DDP config of a warm-started tiny policy; ``overrides`` replace keys (a dict value
    updates a section)."""
    cfg = {
        "policy_path": str(tmp_path / "init"), "tokens_per_object": 8,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
        "prompts": ["a cube", "a ball", "a cone"], "sampling": {"max_reasoning_tokens": 3},
        "rewards_global": [{"builtin": "occupancy_iou"}], "rewards_local": [{"builtin": "surface_f1"}],
        "group_size": 4, "prompts_per_step": 1, "lr": 0.001, "steps": 2, "save_every": 2,
        "output_dir": str(tmp_path / "run"), "eval_group_size": 0, "render": False,
        "accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_threads": 1,
        "warm_start": {"enabled": True, "shapes": ["cube", "sphere", "cone"], "steps": 5, "hidden_size": 32, "num_layers": 1},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def _env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_rl(tmp_path: Path, cfg: dict, timeout: float = 300, name: str = "run", extra_path: Path | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """``python -m rewardkit rl --config`` (Fabric launches the other processes); ``extra_path`` goes on
    PYTHONPATH (modules of ``fn:`` reward terms). Raises ``subprocess.TimeoutExpired`` past ``timeout``."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    [proc] = _run_group([[sys.executable, "-m", "rewardkit", "rl", "--config", str(path)]], tmp_path,
                        _env(extra_path), timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:]
    return proc


def _run_group(cmds: list[list[str]], cwd: Path, env: dict, timeout: float) -> list[subprocess.CompletedProcess]:
    """Run the commands at once, each in its own process group, output (stdout + stderr) captured. Past
    ``timeout`` every process of every group is killed (the workers a launcher started too) and
    ``subprocess.TimeoutExpired`` is raised."""
    import time

    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
                              start_new_session=True) for c in cmds]
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
        raise
    return [subprocess.CompletedProcess(c, p.returncode, out, "") for c, p, out in zip(cmds, procs, outs)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rl_two_nodes(tmp_path: Path, cfg: dict, timeout: float = 300, name: str = "nodes") -> list[str]:
    """Two ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT``
    invocations (one process each, gloo), as two machines of a multi-node run would start them; returns
    both outputs. ``cfg`` must say ``devices: 1, num_nodes: 2``."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", name,
           "-m", "rewardkit", "rl", "--config", str(path)]
    env = _env()
    env["GLOO_SOCKET_IFNAME"] = "lo"  # both "nodes" are this machine
    procs = _run_group([cmd, cmd], tmp_path, env, timeout)
    for p in procs:
        assert p.returncode == 0, p.stdout[-6000:]
    return [p.stdout for p in procs]
