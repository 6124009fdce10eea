"""rewardkit as a library inside other people's environments: the wheel ships the labeling config, the core
install leaves DVC / Lightning / Celery / the Label Studio SDK out (real pip resolution), scoring works
without them, a command that needs an extra says which one, and a wheel install runs `annotate up`
against a real Label Studio server with its packaged config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers.blocked import blocked_env
from helpers.scoring import mesh_files, scorer_set_dir

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "rewardkit" / "annotation" / "resources"
HEAVY = ("dvc", "lightning", "label-studio-sdk", "celery")
# the packages of the extras, made unimportable for the core test (top-level import names)
BLOCKED = ("dvc", "lightning", "pytorch_lightning", "lightning_fabric", "label_studio_sdk", "celery", "polars",
           "matplotlib", "datasets", "fastapi", "uvicorn", "krippendorff", "transformers", "peft")


def test_packaged_annotation_files_are_the_checkout_ones():
    """annotation/ (what the docs point people to) and the packaged copy never diverge."""
    for name in ("label_config.xml", "guidelines.md"):
        assert (RESOURCES / name).read_bytes() == (ROOT / "annotation" / name).read_bytes(), name


def _source_copy(dest: Path) -> Path:
    """The project's files as git sees them (tracked + untracked-not-ignored), without build outputs."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_symlink() or not src.is_file() or rel.startswith(("data/", "reports/", "pipelines/")):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _source_copy(tmp_path_factory.mktemp("rk-src") / "rewardkit")


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rk-wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(source)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    [whl] = out.glob("rewardkit-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_ships_the_labeling_config(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in ("label_config.xml", "guidelines.md"):
            member = f"rewardkit/annotation/resources/{name}"
            assert member in names, sorted(n for n in names if "annotation" in n)
            assert z.read(member) == (ROOT / "annotation" / name).read_bytes()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    assert "Provides-Extra: annotate" in text and "Provides-Extra: all" in text
    assert "License-File: LICENSE" in text or any(n.endswith("licenses/LICENSE") for n in names)


def _resolve(source: Path, spec: str, report: Path) -> set[str]:
    """What `pip install <spec>` into an empty environment would install (pip's real resolver, PyPI)."""
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
                        "-q", "--report", str(report), spec], capture_output=True, text=True, timeout=600, cwd=source)
    assert p.returncode == 0, p.stderr[-3000:]
    return {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_core_install_leaves_the_heavy_extras_out_and_all_restores_them(source, tmp_path):
    core = _resolve(source, ".", tmp_path / "core.json")
    every = _resolve(source, ".[all]", tmp_path / "all.json")
    for name in HEAVY:
        assert name not in core, f"{name} is pulled in by the core install"
        assert name in every, f"{name} is missing from rewardkit[all]"
    for name in ("torch", "open-clip-torch", "trimesh", "pyrender", "huggingface-hub", "safetensors", "rewardkit"):
        assert name in core
    assert core < every
    print(f"core: {len(core)} packages, [all]: {len(every)} packages")


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a sitecustomize that makes the extras' packages unimportable (as if not installed)."""
    return blocked_env(tmp_path, set(BLOCKED))


@pytest.mark.slow
def test_scoring_works_with_the_core_only_and_extras_are_named(tmp_path):
    env = _blocked_env(tmp_path)
    rk = [sys.executable, "-m", "rewardkit"]
    probe = subprocess.run([sys.executable, "-c", "import lightning"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'lightning'" in probe.stderr  # the blocker works
    p = subprocess.run([*rk, "score", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--scorer" in p.stdout, p.stderr[-2000:]
    files = mesh_files()
    p = subprocess.run([*rk, "score", str(files["red_box"]), "-p", "a red box", "--scorer", str(scorer_set_dir()),
                        "--json", "--no-progress", "--device", "cpu"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    [res] = json.loads(p.stdout)["results"]
    assert set(res["scores"]) == {"global", "local"}
    for args, extra in ((["train"], "train"), (["annotate", "status"], "annotate"), (["serve", "--scorer", "x"], "serve"),
                        (["demo", "generate", "--out", str(tmp_path / "d")], "pipeline")):
        p = subprocess.run([*rk, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert p.returncode == 2, (args, p.stderr[-2000:])
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and f"rewardkit[{extra}]" in lines[0] and "Traceback" not in p.stderr, (args, p.stderr)


def _venv_with_wheel(dest: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel; its dependencies come from this interpreter's site-packages through
    plain .pth path lines (so the outer editable rewardkit is not visible, only the wheel's)."""
    base_python = getattr(sys, "_base_executable", None) or str(Path(sys.base_prefix) / "bin" / "python3")
    subprocess.run([base_python, "-m", "venv", str(dest)], check=True, capture_output=True)
    py = dest / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    outer = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "zz-outer-site-packages.pth").write_text("".join(f"{o}\n" for o in outer))
    # --ignore-installed: the outer environment's editable rewardkit must neither satisfy nor be uninstalled
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=dest)
    assert p.returncode == 0, p.stderr[-2000:]
    return py


@pytest.mark.slow
@pytest.mark.labelstudio
def test_a_wheel_install_runs_annotate_up_with_its_packaged_config(label_studio, wheel, tmp_path):
    from label_studio_sdk import LabelStudio

    env_ls = label_studio
    py = _venv_with_wheel(tmp_path / "venv", wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("LABEL_STUDIO_")}
    work = tmp_path / "elsewhere"  # no annotation/ folder here, nor above it
    work.mkdir()
    p = subprocess.run([str(py), "-c", "import rewardkit; print(rewardkit.__file__)"], cwd=work, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert Path(p.stdout.strip()).is_relative_to(tmp_path / "venv"), p.stdout
    p = subprocess.run([str(tmp_path / "venv" / "bin" / "rewardkit"), "annotate", "up", "--url", env_ls.url,
                        "--renders", str(env_ls.renders), "--document-root", str(env_ls.document_root),
                        "--data-dir", str(tmp_path / "state"), "--credentials", str(env_ls.credentials),
                        "--title", "rewardkit from a wheel"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    state = json.loads((tmp_path / "state" / "rewardkit-server.json").read_text())
    client = LabelStudio(base_url=env_ls.url, api_key=env_ls.token)
    project = client.projects.get(id=state["project_id"])
    assert project.title == "rewardkit from a wheel"
    assert "<Choices name=\"global\"" in project.label_config and "<Choices name=\"local\"" in project.label_config


def test_the_cli_reads_the_one_extras_table_of_pyproject():
    """The CLI's "pip install 'rewardkit[x]'" advice comes from pyproject's extras (one table): every package
    a command may miss is installed by the extra it names (peft by rl: LoRA policies)."""
    import tomllib

    from rewardkit.cli import COMMAND_EXTRAS, extras_table

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lines = [f'{req}; extra == "{extra}"' for extra, reqs in extras.items() for req in reqs]
    table = extras_table(lines)
    assert set(table) == set(extras)
    assert {"peft", "transformers", "lightning", "pytorch_lightning"} <= table["rl"]
    assert {"multipart", "fastapi"} <= table["serve"] and "dvc" in table["pipeline"] and "peft" in table["all"]
    assert table["pipeline"] >= table["train"] | table["serve"] | table["rl"] | table["annotate"]
    for command, extra in COMMAND_EXTRAS.items():
        assert extra in extras, (command, extra)
