"""The README's main command, ``bash scripts/demo.sh``, in a ``git clone`` of the repository with small params.

The clone is what a newcomer gets (:func:`clone_repo`: the commit under test, plus the developer's uncommitted
work when run locally), so a ``.gitignore`` line, a file that is not committed or an install step that
breaks the README's command fails here. Checks that the clone's ``scripts/setup.sh`` installed rewardkit from
the clone, that every stage wrote its outputs, that the exported scorers rank the clean candidate of each
*held-out* demo prompt above its degradations (>= 90% for the stage that owns the degradation, near chance
for the other stage), that a second ``bash scripts/demo.sh`` runs nothing and leaves ``git status`` clean once
``dvc.lock`` and ``reports/`` are committed, and that changing a parameter or the code a stage runs would
re-run exactly that stage and what follows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pipelines` is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

# Small enough for a 2-core CPU in a few minutes; the same stages and code paths as the default run.
SMALL_PARAMS = {
    "generate": {
        "source": "demo", "own": {"dir": "data/own", "holdout_fraction": 0.2, "seed": 0},
        "prompts_per_category": 8, "holdout_per_category": 2,
        "categories": ["chair", "table", "mug", "lamp", "bottle", "car"],
        # the prompt-dependent degradations (wrong_category, wrong_colour) need more data and steps than a
        # CI run can spend on a 2-core CPU; the default params.yaml run includes and reports them
        "geometry": ["vertex_noise", "missing_part", "extra_part", "wrong_proportions"],
        "texture": ["texture_noise", "blur", "texture_removed"],
        "mixed": 1, "design": "factorial", "factorial": {"geometry": 2, "texture": 2}, "seed": 0,
    },
    "render": {"protocol": "30:20,150:20,270:20", "size": 128, "modes": ["rgb", "geometry"], "workers": 2},
    "pairs": {"strategy": "k_per_prompt", "k": 7, "seed": 0, "splits": ["train"],
              "active": {"previous": "data/previous_round", "stage": "global", "k": 30, "random_fraction": 0.2,
                         "disagreement_fraction": 0.3, "per_prompt_cap": 2, "exposure_weight": 0.02, "seed": 0}},
    "preferences": {"source": "synthetic", "noise": 0.0, "seed": 0, "rules": "auto",
                    "anchors": {"global_terms": ["occupancy_iou"], "local_terms": ["surface_f1", "mirror_symmetry"],
                                "resolution": 8, "margin": 0.05}},
    "train": {
        "include_previous": True,
        "common": {  # the demo's pretrained, frozen EfficientNet-Lite0 trunk on cached view features
            "model": {"backbone": {"name": "rk-effnet-lite0", "pretrained": "efficientnet-lite0"},
                      "unlocked_image_blocks": 0, "train_image_head": True, "lock_text": False},
            "feature_cache": True, "num_threads": 1,
            "batch_size": 16, "max_epochs": 8, "lr": 0.001, "val_fraction": 0.2, "seed": 0,
        },
        "global": {},
        "local": {},
    },
    "export": {"name": "rewardkit-demo-small", "ensemble": {"members": 3, "bootstrap": True, "seed": 0, "epochs": 10,
                                                             "lr": 0.001, "init_noise": 0.5, "batch_size": 64}},
    "evaluate": {"grids": 2},
    # Hi-GRPO on a tiny warm-started policy, rewarded by the exported scorers (a few steps: the outputs and
    # the scorer terms are what this run checks; the reward rise is the default run's and test_rl_*'s)
    "rl": {
        "policy_path": "{output_dir}/init_policy", "tokens_per_object": 64,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 8, "block": 2},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_reasoning_tokens": 8},
        "prompts": ["a cube", "a ball", "a cone", "an arch"],
        "rewards_global": [{"name": "shape_iou", "builtin": "occupancy_iou", "weight": 1.0},
                         {"name": "global_scorer", "scorer": "data/scorers", "weight": 0.5, "args": {"stage": "global"}}],
        "rewards_local": [{"name": "surface_f1", "builtin": "surface_f1", "weight": 1.0},
                        {"name": "local_scorer", "scorer": "data/scorers", "weight": 0.5, "args": {"stage": "local"}}],
        "reward_on_error": "raise", "group_size": 4, "prompts_per_step": 2, "mu": 2, "lr": 0.0005,
        "micro_batch_size": 16, "steps": 3, "seed": 0, "save_every": 0, "eval_group_size": 2, "render_size": 64,
        "accelerator": "cpu", "devices": 1, "num_threads": 1,
        "warm_start": {"enabled": True, "arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                       "steps": 60, "batch_size": 16, "lr": 0.003, "max_shift": 1},
    },
    "rl_penalised": {"uncertainty_penalty": 1.0},
    # the policy before vs after RL on held-out prompts, random-init extractors (labelled so in the report)
    "eval_gen": {
        "prompts": [{"prompt": "a small cube", "shape": "cube", "category": "spatial_structural_geometry"},
                    {"prompt": "a tall cone", "shape": "cone", "category": "stylized_representation"},
                    {"prompt": "a table", "shape": "table", "category": "mechanical_affordances"}],
        "samples_per_prompt": 3, "references_per_prompt": 2, "seed": 0, "random_init_extractors": True,
        "inception_input_size": 75,
        "protocol": {"views": "30:20,150:20,270:20", "size": 64, "shading": "untextured",
                     "background": [255, 255, 255], "untextured_color": [190, 190, 190],
                     "clip": {"prompt": "first_sentence"}, "kd": {"subsets": 10, "subset_size": 100}, "batch_size": 32},
    },
}

N_CANDIDATES = {"train": 3 * 3, "holdout": 1 + 4 + 3 + 1}  # factorial; single: clean + geometry + texture + mixed
N_PROMPTS = {"train": 6 * 8, "holdout": 6 * 2}
STAGES = ["generate", "render", "pairs", "label", "train_global", "train_local", "export", "evaluate", "rl", "rl_penalised",
          "eval_gen"]


def git(args: list[str], cwd: Path) -> str:
    return run(["git", *args], cwd).stdout


def clone_repo(dest: Path, params: dict | None = None) -> Path:
    """A ``git clone`` of this repository as a newcomer gets it, holding the developer's work.

    The clone checks out the commit ``git stash create`` makes of the uncommitted changes to tracked files
    (HEAD when there are none) and gets a copy of the untracked files git does not ignore (symlinks left
    out: the shared ``.venv`` of a worktree is one); in CI the tree is clean, so the clone is exactly the
    commit under test. ``params`` becomes its params.yaml. What this adds is committed in the clone, so
    its ``git status`` starts clean. Then the clone gets a ``.venv`` of its own whose site-packages also
    see this interpreter's (a ``.pth`` line), so the clone's ``scripts/setup.sh`` really runs and installs
    rewardkit from the clone (editable) while torch and the rest are found satisfied, not downloaded.
    """
    commit = git(["stash", "create"], ROOT).strip() or git(["rev-parse", "HEAD"], ROOT).strip()
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], dest.parent)
    git(["checkout", "-q", "-b", "under-test", commit], dest)
    untracked = [f for f in git(["ls-files", "-z", "--others", "--exclude-standard"], ROOT).split("\0") if f]
    copied = 0
    for rel in untracked:
        src = ROOT / rel
        if src.is_symlink() or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        copied += 1
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if copied or params is not None:
        git(["add", "-A"], dest)
        git(["commit", "-q", "-m", "test: the developer's untracked files and the test's params"], dest)
    # the clone's own environment (scripts/setup.sh keeps an existing .venv)
    assert not (dest / ".venv").exists(), f"{dest}/.venv came with the clone"
    base_python = getattr(sys, "_base_executable", None) or str(Path(sys.base_prefix) / "bin" / "python3")
    run([base_python, "-m", "venv", str(dest / ".venv")], dest)
    site = Path(run([str(dest / ".venv/bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    dest, env_=clone_env(dest)).stdout.strip())
    outer = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    assert site.is_relative_to(dest) and not any(Path(o).is_relative_to(dest) for o in outer), (site, outer)
    # plain path lines: the outer .pth files (its editable rewardkit among them) are not processed
    (site / "zz-outer-site-packages.pth").write_text("".join(f"{o}\n" for o in outer))
    return dest


def clone_env(ws: Path) -> dict[str, str]:
    """The environment of a newcomer's shell in the clone: its ``.venv/bin`` first on PATH, nothing of this
    test process's environment (virtual env, PYTHONPATH, the outer ``.venv/bin``) that could stand in."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "REWARDKIT_PARAMS")}
    outer_bin = Path(sys.prefix) / "bin"
    path = [p for p in e.get("PATH", "").split(os.pathsep) if p and Path(p) not in (outer_bin, ROOT / ".venv/bin")]
    e["PATH"] = os.pathsep.join([str(ws / ".venv" / "bin"), *path])
    e["DVC_NO_ANALYTICS"] = "1"
    e["REWARDKIT_FEATURE_CACHE"] = str(ws.parent / "view-features")  # not the user's ~/.cache
    for who in ("AUTHOR", "COMMITTER"):
        e.setdefault(f"GIT_{who}_NAME", "rewardkit-test")
        e.setdefault(f"GIT_{who}_EMAIL", "test@example.invalid")
    return e


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.pop("REWARDKIT_PARAMS", None)
    e["DVC_NO_ANALYTICS"] = "1"
    for who in ("AUTHOR", "COMMITTER"):
        e.setdefault(f"GIT_{who}_NAME", "rewardkit-test")
        e.setdefault(f"GIT_{who}_EMAIL", "test@example.invalid")
    return e


# Generous limits: the small run takes about 10 min on an idle 2-core machine and over 15 min on a loaded one.
def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 2100,
        extra_env: dict[str, str] | None = None, env_: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd``, with this process's environment (or ``env_``, e.g. :func:`clone_env`)."""
    e = env() if env_ is None else dict(env_)
    if extra_env is not None:  # a Label Studio session: only what the test gives
        e = {k: v for k, v in e.items() if not k.startswith("LABEL_STUDIO_")} | extra_env
    p = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}")
    return p


def py(ws: Path) -> str:
    """The clone's interpreter (its .venv)."""
    return str(ws / ".venv" / "bin" / "python")


def in_clone(ws: Path, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return run(cmd, ws, env_=clone_env(ws), **kw)


def dvc_cmd(ws: Path, *args: str) -> list[str]:
    return [py(ws), "-m", "dvc", *args]


# What `dvc repro` would run after an edit. A dry run cannot know that a re-run stage's outputs will change,
# so it lists only the stages whose own deps or params changed; --force-downstream adds their descendants,
# which is what a real run does once the re-trained models differ. A dry run needs the outputs of a run
# (on a never-run clone it stops at the first stage whose deps do not exist yet), so these come after one.
DRY_RUN = ("repro", "--dry", "--force-downstream")


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def git_status(ws: Path, *extra: str) -> list[str]:
    return git(["status", "--porcelain", "--untracked-files=all", *extra], ws).splitlines()


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The README's main command, ``bash scripts/demo.sh``, in a clone with the CI-sized params."""
    ws = clone_repo(tmp_path_factory.mktemp("pipeline") / "clone", SMALL_PARAMS)
    t0 = time.perf_counter()
    p = in_clone(ws, ["bash", "scripts/demo.sh"])
    wall = time.perf_counter() - t0
    out = p.stdout + p.stderr
    print(f"bash scripts/demo.sh (small params) in a clone: {wall:.0f}s;",
          *[line for line in out.splitlines() if line.startswith("[demo]")])
    return ws, out, wall


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_stage_ran_and_wrote_its_outputs(pipeline_run):
    ws, out, _ = pipeline_run
    assert stages_run(out) == STAGES
    from rewardkit.data.tables import read_items, read_pairs, read_preferences

    items = read_items(ws / "data/items.parquet")
    assert items.height == sum(N_PROMPTS[s] * N_CANDIDATES[s] for s in N_PROMPTS)
    for row in items.iter_rows(named=True):
        assert (ws / row["mesh_path"]).is_file()
        assert (ws / row["render_dir"] / "meta.json").is_file()
        assert len(list((ws / row["render_dir"] / "geometry").glob("*.png"))) == 3
    pairs = read_pairs(ws / "data/pairs.parquet")
    assert pairs.height == 6 * 8 * 7
    prefs = read_preferences(ws / "data/preferences.parquet")
    assert prefs.height == 2 * pairs.height and set(prefs["source"]) == {"synthetic"}
    for stage in ("global", "local"):
        assert (ws / f"data/models/{stage}/model/model.safetensors").is_file()
        cfg = json.loads((ws / f"data/scorers/{stage}/config.json").read_text())
        assert cfg["stage"] == stage and (ws / f"data/scorers/{stage}/model.safetensors").is_file()
        assert (ws / f"reports/train_{stage}.json").is_file()
        assert (ws / f"reports/learning_curve_{stage}.csv").is_file()
    assert json.loads((ws / "data/scorers/config.json").read_text())["format"] == "rewardkit.scorer_set"
    plots = ws / "reports/plots"
    assert (plots / "accuracy_by_degradation.png").is_file() and (plots / "learning_curves.png").is_file()
    assert len(list(plots.glob("grid_*.png"))) == 2
    # rl: a Hugging Face policy, logs with every reward term (the scorer terms scored, none failed), the report
    rl = SMALL_PARAMS["rl"]
    assert (ws / "data/rl/policy/config.json").is_file() and (ws / "data/rl/policy/model.safetensors").is_file()
    records = [json.loads(line) for line in (ws / "data/rl/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, rl["steps"] + 1))
    for r in records:
        for key in ("global/shape_iou", "global/global_scorer", "local/surface_f1", "local/local_scorer"):
            assert isinstance(r[key], float) and r[key] == r[key], (key, r)  # a number, not NaN
        assert not any(k.startswith("failed/") for k in r), r
    report = json.loads((ws / "reports/rl.json").read_text())
    assert report["steps"] == rl["steps"]
    for key in ("global/reward_first", "global/reward_last", "local/reward_first", "local/reward_last"):
        assert isinstance(report[key], float)
    assert set(report["eval_before"]) == set(report["eval_after"]) == {"global/reward", "local/reward"}
    curve = (ws / "reports/rl_rewards.csv").read_text().splitlines()
    assert curve[0].startswith("step,global/reward,local/reward") and len(curve) == 1 + rl["steps"]
    for name in ("reward_curve.png", "samples_before.png", "samples_after.png"):
        assert (ws / "reports/rl" / name).stat().st_size > 1000, name
    # rl_penalised: the same run from the same policy with mean - k * std scorer terms, compared per prompt
    pen = [json.loads(line) for line in (ws / "data/rl_penalised/metrics.jsonl").read_text().splitlines()]
    assert len(pen) == rl["steps"] and all(r["global/global_scorer_uncertainty"] >= 0 for r in pen), pen[0]
    assert (ws / "data/rl_penalised/init_policy").exists() is False  # started from data/rl/init_policy
    compare = (ws / "reports/rl_penalised/compare.csv").read_text().splitlines()
    assert compare[0].startswith("prompt,global/reward_before,global/reward_plain,global/reward_penalised")
    assert {line.split(",")[0] for line in compare[1:]} == set(rl["prompts"])
    assert (ws / "reports/rl_penalised/compare.png").stat().st_size > 5000
    # eval_gen: both policies scored on the held-out prompts, per category, random-init extractors labelled
    eg, ev = json.loads((ws / "reports/eval_gen.json").read_text()), SMALL_PARAMS["eval_gen"]
    assert eg["random_init_extractors"] is True and len(eg["labels"]) == 3
    assert all("RANDOM-INIT" in label for label in eg["labels"])
    assert eg["heldout_prompts"] == len(ev["prompts"]) and not {p["prompt"] for p in ev["prompts"]} & set(rl["prompts"])
    for run in ("init", "final"):
        o = eg[run]["overall"]
        for key in ("clip_score", "kd_incep_x100", "kd_incep_x100_std", "fd_incep", "kd_dinov2_x100"):
            assert isinstance(o[key], float) and o[key] == o[key], (run, key, o)  # a number, not NaN
        assert o["fd_incep"] >= 0 and -100 <= o["clip_score"] <= 100
        assert o["objects"] + eg[run]["excluded"] == len(ev["prompts"]) * ev["samples_per_prompt"]
        assert set(eg[run]["per_category"]) == {p["category"] for p in ev["prompts"]}
        full = json.loads((ws / f"reports/eval_gen/{run}.json").read_text())
        assert full["protocol"]["cameras"]["azimuths"] == [30.0, 150.0, 270.0] and full["protocol"]["size"] == 64
        assert full["inputs"]["excluded_count"] == eg[run]["excluded"]
    assert set(eg["change"]) >= {"clip_score", "kd_incep_x100", "fd_incep", "kd_dinov2_x100"}
    assert eg["change"]["fd_incep"] == pytest.approx(eg["final"]["overall"]["fd_incep"] - eg["init"]["overall"]["fd_incep"])
    assert (ws / "reports/eval_gen/metrics.png").stat().st_size > 5000
    assert not list(ws.rglob("*.pkl")) and not list(ws.rglob("*.pickle"))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_exported_scorers_rank_clean_above_degradations_on_heldout_prompts(pipeline_run):
    ws, _, _ = pipeline_run
    m = json.loads((ws / "reports/metrics.json").read_text())
    assert m["holdout_prompts"] == 12
    for stage in ("global", "local"):
        r = m[stage]
        # issues 7 and 17: >= 0.90 on the held-out prompts' own degradations. Measured with these params: seed 0
        # global 0.967 / local 0.958, seed 1 (every seed of the params set to 1) 0.983 / 0.958 (docs/reward-models.md)
        assert r["holdout_owned_accuracy"] >= 0.90, (stage, r)
        assert abs(r["holdout_other_accuracy"] - 0.5) <= 0.2, (stage, r)  # near chance
        for key in ("val_accuracy", "val_tie_band_accuracy", "val_ece", "disentanglement"):
            assert r[key] is not None, (stage, key)
    # the global model never sees texture: texture-only degradations leave its score exactly unchanged
    assert m["global"]["holdout_other_accuracy"] == 0.5


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_readme_command_installed_rewardkit_from_the_clone(pipeline_run):
    ws, out, _ = pipeline_run
    assert "[setup] done" in out and "dvc repro finished in" in out
    p = in_clone(ws, [py(ws), "-c", "import rewardkit, torch; print(rewardkit.__file__); print(torch.__file__)"])
    rewardkit_file, torch_file = p.stdout.split()
    assert Path(rewardkit_file) == ws / "rewardkit" / "__init__.py"  # the clone's code ran the stages
    # torch and the other dependencies were found satisfied (the .pth of clone_repo), not installed again
    assert not Path(torch_file).is_relative_to(ws)
    site = Path(rewardkit_file).parents[1] / ".venv"
    assert not list(site.rglob("site-packages/torch")) and (ws / ".venv/bin/rewardkit").is_file()
    from importlib.metadata import distribution  # and this process's install still points where it did

    assert str(ws) not in (distribution("rewardkit").read_text("direct_url.json") or "")


# What a run may leave that git ignores, besides the outputs DVC writes (and ignores) in data/.
RUN_LEFTOVERS = {".venv/", "rewardkit.egg-info/", ".dvc/cache/", ".dvc/tmp/", "dvc_plots/"}


def dvc_ignored_outs() -> set[str]:
    """The cached outputs of dvc.yaml (DVC writes a .gitignore line for each), as git status names them."""
    outs = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if opts.get("cache", True):
                outs.add(path + ("/" if not Path(path).suffix else ""))
    return outs


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_second_demo_runs_nothing_and_git_status_is_what_a_dvc_user_expects(pipeline_run):
    ws, _, _ = pipeline_run
    # after the run: the new lock and the reports it regenerated, nothing else; dvc.lock is not ignored
    changed = git_status(ws)
    assert changed and all(line[3:] == "dvc.lock" or line[3:].startswith("reports/") for line in changed), changed
    assert any(line[3:] == "dvc.lock" for line in changed)
    assert run(["git", "check-ignore", "-q", "dvc.lock"], ws, check=False).returncode == 1
    # what git ignores: the data outputs (data/.gitignore, as DVC wrote it: unchanged) and known leftovers
    ignored = {line[3:] for line in git_status(ws, "--ignored=matching") if line.startswith("!! ")}
    ignored = {i for i in ignored if "__pycache__/" not in i}
    assert ignored - RUN_LEFTOVERS == dvc_ignored_outs(), ignored ^ (RUN_LEFTOVERS | dvc_ignored_outs())
    # a DVC user commits the lock with the results it records; the same command again runs nothing
    git(["add", "dvc.lock", "reports"], ws)
    git(["commit", "-q", "-m", "a demo run: dvc.lock and reports/"], ws)
    t0 = time.perf_counter()
    p = in_clone(ws, ["bash", "scripts/demo.sh"])
    out = p.stdout + p.stderr
    print(f"second bash scripts/demo.sh: {time.perf_counter() - t0:.0f}s;",
          *[line for line in out.splitlines() if line.startswith("[demo]")])
    assert stages_run(out) == [] and "Data and pipelines are up to date." in out, out[-3000:]
    assert "rewardkit score MESH.glb" in out  # the summary printed
    assert git_status(ws) == []


def set_params(ws: Path, change) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    change(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_training_param_reruns_training_onwards(pipeline_run):
    ws, _, _ = pipeline_run
    try:
        set_params(ws, lambda p: p["train"]["common"].update(lr=0.0004))
        p = in_clone(ws, dvc_cmd(ws, *DRY_RUN))
        assert stages_run(p.stdout + p.stderr) == ["train_global", "train_local", "export", "evaluate", "rl",
                                                   "rl_penalised", "eval_gen"]
        git(["checkout", "params.yaml"], ws)
        set_params(ws, lambda p: p["train"].update(local={"max_epochs": 3}))
        p = in_clone(ws, dvc_cmd(ws, *DRY_RUN))
        assert stages_run(p.stdout + p.stderr) == ["train_local", "export", "evaluate", "rl", "rl_penalised", "eval_gen"]
        git(["checkout", "params.yaml"], ws)
        set_params(ws, lambda p: p["rl"].update(steps=4))  # an RL parameter re-runs rl and its evaluation
        p = in_clone(ws, dvc_cmd(ws, *DRY_RUN))
        assert stages_run(p.stdout + p.stderr) == ["rl", "rl_penalised", "eval_gen"]
        git(["checkout", "params.yaml"], ws)
        set_params(ws, lambda p: p["eval_gen"].update(samples_per_prompt=2))  # only the evaluation
        p = in_clone(ws, dvc_cmd(ws, *DRY_RUN))
        assert stages_run(p.stdout + p.stderr) == ["eval_gen"]
    finally:
        git(["checkout", "params.yaml"], ws)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_code_edit_reruns_the_stages_that_run_that_code(pipeline_run):
    ws, _, _ = pipeline_run

    def after_edit(rel: str, *dvc_args: str) -> list[str]:
        with open(ws / rel, "a") as fh:
            fh.write("\n# an edit\n")
        try:
            p = in_clone(ws, dvc_cmd(ws, *dvc_args))
            return stages_run(p.stdout + p.stderr)
        finally:
            git(["checkout", rel], ws)

    assert after_edit("rewardkit/render/renderer.py", *DRY_RUN) == STAGES[1:]  # render and all that follows
    # `pairs` runs the scoring and training code (pairs.strategy active scores the pool with round r's scorers),
    # so an edit there re-runs pairs (and, downstream, label) too
    assert after_edit("rewardkit/train/module.py", *DRY_RUN) == ["pairs", "label", "train_global", "train_local",
                                                                  "export", "evaluate", "rl", "rl_penalised", "eval_gen"]
    assert after_edit("rewardkit/scoring/api.py", *DRY_RUN) == ["pairs", "label", "train_global", "train_local",
                                                                 "export", "evaluate", "rl", "rl_penalised", "eval_gen"]
    # `label` runs the anchor rules of rewardkit.rl.annotator (the loop's round r+1 on the policy's samples),
    # so an RL edit re-runs label too; its answers on the demo do not change, so a real run stops there
    # and goes on with rl (DRY_RUN's --force-downstream cannot know that and lists what follows label)
    assert after_edit("rewardkit/rl/hi_grpo.py", *DRY_RUN) == ["label", "train_global", "train_local", "export",
                                                                "evaluate", "rl", "rl_penalised", "eval_gen"]
    assert after_edit("rewardkit/rl/hi_grpo.py", "repro", "--dry") == ["label", "rl", "rl_penalised", "eval_gen"]
    assert after_edit("rewardkit/cli/score.py", *DRY_RUN) == []  # the CLI runs in no stage
    # the annotation code runs in `label` (it pulls from Label Studio); the synthetic labels it writes here
    # are the same, so a real run re-runs `label` and nothing else: training does not re-run
    assert after_edit("rewardkit/annotation/pull.py", "repro", "--dry") == ["label"]
    with open(ws / "rewardkit/annotation/pull.py", "a") as fh:
        fh.write("\n# an edit\n")
    try:
        p = in_clone(ws, dvc_cmd(ws, "repro"))
        assert stages_run(p.stdout + p.stderr) == ["label"]
    finally:
        git(["checkout", "rewardkit/annotation/pull.py"], ws)
    p = in_clone(ws, dvc_cmd(ws, "repro"))  # and back: `label` again, or its outputs from DVC's run cache
    out = p.stdout + p.stderr
    assert stages_run(out) == ["label"] or (stages_run(out) == [] and "Stage 'label' is cached" in out), out
    assert git_status(ws) == []  # the lock is the committed one again


def import_closure(module: Path) -> set[Path]:
    """The repository's .py files that importing ``module`` runs: its imports of rewardkit and pipelines,
    also those inside functions, and the ``__init__`` of every package on the way, transitively."""
    import ast

    def file_of(name: str) -> Path | None:
        p = ROOT.joinpath(*name.split("."))
        return p / "__init__.py" if (p / "__init__.py").is_file() else p.with_suffix(".py") if p.with_suffix(
            ".py").is_file() else None

    seen: set[Path] = set()
    todo = [module]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        rel = f.relative_to(ROOT).with_suffix("").parts
        package = rel[:-1]  # what a relative import is relative to
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)
        for name in names:
            parts = name.split(".")
            if parts[0] not in ("rewardkit", "pipelines"):
                continue
            for i in range(1, len(parts) + 1):
                dep = file_of(".".join(parts[:i]))
                if dep is not None:
                    todo.append(dep)
    return seen


def test_each_stage_depends_on_the_code_it_imports():
    """dvc.yaml's code deps of a stage are exactly the pipelines/ modules and the rewardkit subpackages
    (or top-level files) its module imports, so an edit re-runs the stages that run the edited code."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        module = ROOT / (stage["cmd"].split()[2].replace(".", "/") + ".py")  # python -m pipelines.X [args]
        wanted = set()
        for f in import_closure(module):
            parts = f.relative_to(ROOT).parts
            if parts == ("pipelines", "__init__.py"):
                continue  # empty: makes pipelines/ a package
            wanted.add("/".join(parts[:2]))
        code_deps = {d for d in stage["deps"] if d.split("/")[0] in ("rewardkit", "pipelines")}
        assert code_deps == wanted, (name, "missing", wanted - code_deps, "not imported", code_deps - wanted)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dvc_metrics_and_plots_read_the_report(pipeline_run):
    ws, _, _ = pipeline_run
    p = in_clone(ws, dvc_cmd(ws, "metrics", "show", "--json"))
    assert "holdout_owned_accuracy" in p.stdout and "val_pairwise_accuracy" in p.stdout
    p = in_clone(ws, dvc_cmd(ws, "plots", "show", "--json"))
    assert "accuracy_by_degradation" in p.stdout and "learning_curve_global" in p.stdout
    assert "rl_rewards" in p.stdout and "reward_curve.png" in p.stdout
    p = in_clone(ws, dvc_cmd(ws, "metrics", "show", "--json"))
    assert "kd_incep_x100" in p.stdout and "eval_gen.json" in p.stdout


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_rewardkit_score_with_the_exported_scorers(pipeline_run):
    ws, _, _ = pipeline_run
    shared = ROOT.parent / "shared" / "meshes" / "duck" / "Duck.glb"  # a real mesh, where shared/ is beside the repo
    meshes = [str(shared)] if shared.is_file() else []
    demo = ws / "data/candidates/meshes"
    meshes.append(str(demo / sorted(p.name for p in demo.glob("*-clean.glb"))[0]))
    p = in_clone(ws, ["rewardkit", "score", *meshes, "--prompt", "a yellow rubber duck",  # the clone's .venv/bin
                     "--scorer", str(ws / "data/scorers"), "--json"])
    results = json.loads(p.stdout)["results"]
    assert len(results) == len(meshes)
    for r in results:
        assert r["error"] is None and set(r["scores"]) == {"global", "local"}
        assert all(isinstance(v, float) for v in r["scores"].values())


# -- fast checks of the stage modules' own logic (no DVC run) ------------------------------------------------

def test_train_params_merge_per_stage():
    from rewardkit.config import deep_merge

    common = {"model": {"backbone": {"name": "rk-tiny", "pretrained": None}, "lock_text": False}, "lr": 0.1}
    merged = deep_merge(common, {"model": {"lock_text": True}, "max_epochs": 2})
    assert merged == {"model": {"backbone": {"name": "rk-tiny", "pretrained": None}, "lock_text": True}, "lr": 0.1,
                      "max_epochs": 2}
    assert common["model"]["lock_text"] is False  # the shared section is not modified


def test_clean_vs_degraded_credit_and_stage_report():
    import polars as pl

    from rewardkit.eval.heldout import clean_vs_degraded, stage_report

    scored = pl.DataFrame({
        "prompt_id": ["p"] * 5,
        "degradation": ["clean", "blur", "vertex_noise", "texture_noise", "missing_part+blur"],
        "kind": ["none", "texture", "geometry", "texture", "both"],
        "global": [1.0, 1.0, 0.2, 1.0, 0.5],  # texture-blind: equal scores on texture-only candidates
        "local": [2.0, 0.0, 2.5, 1.0, 0.0],
    })
    g = clean_vs_degraded(scored, "global")
    assert dict(zip(g["degradation"], g["credit"])) == {"blur": 0.5, "vertex_noise": 1.0, "texture_noise": 0.5,
                                                        "missing_part+blur": 1.0}
    rep = stage_report("global", g, {"val_pairwise_accuracy": 0.9})
    assert rep["holdout_owned_accuracy"] == 1.0 and rep["holdout_other_accuracy"] == 0.5
    loc = stage_report("local", clean_vs_degraded(scored, "local"), {})
    assert loc["holdout_owned_accuracy"] == 1.0 and loc["holdout_other_accuracy"] == 0.0


def test_learning_curve_rows_from_lightning_csv(tmp_path):
    from rewardkit.train.run_report import learning_curve_rows

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss_step,train/loss_epoch,val/bt_loss,val/pairwise_accuracy\n"
                   "0,9,0.7,,,\n0,16,,,0.6,0.55\n0,16,,0.65,,\n1,33,,,0.4,0.8\n1,33,,0.3,,\n")
    rows = learning_curve_rows(csv)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["train_loss"] == 0.3 and rows[1]["val_pairwise_accuracy"] == 0.8
    assert learning_curve_rows(tmp_path / "missing.csv") == []


def test_dvc_yaml_stages_and_params_sections_match():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert list(dvc["stages"])[: len(STAGES)] == STAGES
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            node = params
            for part in str(key).split("."):
                assert part in node, f"{name}: params key {key} not in params.yaml"
                node = node[part]
    assert set(SMALL_PARAMS) == set(params)  # the CI params cover every section


def test_rl_params_are_a_valid_hi_grpo_config_and_the_report_helpers():
    from rewardkit.reporting.rl_run import curve_rows
    from rewardkit.reporting.rl_run import report_metrics as report
    from rewardkit.rl.trainer import HiGRPOConfig

    for section in (yaml.safe_load((ROOT / "params.yaml").read_text())["rl"], SMALL_PARAMS["rl"]):
        assert "output_dir" not in section  # the stage fixes data/rl
        cfg = HiGRPOConfig.from_dict(section)
        assert cfg.warm_start.enabled and cfg.resolve_prompts()
        assert {t.args.get("stage") for t in cfg.rewards_global + cfg.rewards_local} >= {"global", "local"}
    records = [{"step": 1, "skipped": 1.0}, {"step": 2, "global/reward": 0.1, "local/reward": 0.2, "global/reward_group_std": 0.01,
                                             "local/reward_group_std": 0.02, "global/shape_iou": 0.1}]
    assert curve_rows(records) == [{"step": 2, "global/reward": 0.1, "local/reward": 0.2, "global/reward_group_std": 0.01,
                                    "local/reward_group_std": 0.02, "global/shape_iou": 0.1}]  # per-term columns too
    rep = report({"steps": 2, "window": 1, "global/reward_first": 0.1, "global/reward_last": 0.3, "local/reward_first": 0.2,
                  "local/reward_last": 0.1, "global/reward_rose": True, "local/reward_rose": False,
                  "eval_before": {"global/reward": 0.1, "local/reward": 0.2, "global/shape_iou": 0.1}, "eval_after": {}})
    assert rep["eval_before"] == {"global/reward": 0.1, "local/reward": 0.2} and rep["eval_after"] == {}
    assert rep["global/reward_rose"] is True and rep["local/reward_rose"] is False


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_closing_summary_reads_the_reports(pipeline_run):
    ws, _, _ = pipeline_run
    p = in_clone(ws, [py(ws), "-m", "pipelines.summary"])
    assert "scorers:  data/scorers/" in p.stdout and "rewardkit score MESH.glb" in p.stdout
    m = json.loads((ws / "reports/metrics.json").read_text())
    assert f"accuracy {100 * m['global']['holdout_owned_accuracy']:.0f}% on its own" in p.stdout
    assert "rl:       global reward" in p.stdout and "Hi-GRPO steps" in p.stdout


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bench_recipes_smoke_on_the_runs_data(pipeline_run, tmp_path):
    """benchmarks/bench_recipes.py needs a run's labelled data, so its smoke mode runs here, on this clone's
    (issue 29 item 8); it overwrites the models, scorers and reports, which DVC's cache then restores."""
    ws, _, _ = pipeline_run
    before = tmp_path / "reports-before"  # the run's reports (some are DVC outputs DVC does not cache)
    shutil.copytree(ws / "reports", before)
    try:
        p = in_clone(ws, [py(ws), "benchmarks/bench_recipes.py", "--smoke", "--out", str(tmp_path / "out")])
        assert "| recipe | demo held-out own: global | local |" in p.stdout, p.stdout[-2000:]
        (report,) = (tmp_path / "out").glob("*.json")  # the first recipe's metrics.json, its name and seconds
        assert {"global", "local", "recipe"} <= json.loads(report.read_text()).keys()
    finally:  # the later tests of this module use the clone's run: put it back
        in_clone(ws, dvc_cmd(ws, "checkout", "--force"))
        shutil.rmtree(ws / "reports")
        shutil.copytree(before, ws / "reports")
    assert "up to date" in in_clone(ws, dvc_cmd(ws, "status")).stdout.lower()


# -- a lab's own generations and Label Studio annotations: the same dvc.yaml, other params -----------------

# the lab's meshes are YCB scans (tests/helpers/own_generations.py), not ../shared/meshes: that is the real-mesh
# validation set, never trained on (issue 28; tests/test_demo_real.py checks the hashes)
RANK = ("original", "squashed", "noisy")  # the test's annotators prefer earlier ones on the global question


def own_answer(a: str, b: str, question: str) -> str:
    """The test's annotators: global by RANK; local prefers the original over the copies."""
    ra, rb = RANK.index(a.split("-")[-1]), RANK.index(b.split("-")[-1])
    if question == "local":
        ra, rb = min(ra, 1), min(rb, 1)  # the copies look alike in texture: a tie between them
    return "tie" if ra == rb else ("a" if ra < rb else "b")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_own_generations_and_label_studio_annotations_through_the_same_pipeline(label_studio):
    import copy

    from helpers.own_generations import HELD_OUT, OWN_PROMPTS, own_generations, scan_path
    from rewardkit.annotation import connect
    from rewardkit.data.tables import read_items, read_pairs, read_preferences

    held_prompt, held_scan, _ = OWN_PROMPTS[HELD_OUT]
    env = label_studio
    params = copy.deepcopy(SMALL_PARAMS)
    # what a lab changes in params.yaml: where the candidates and the preferences come from
    params["generate"]["source"] = "own"
    params["preferences"] = {"source": "labelstudio", "labelstudio": {"url": None, "project": "own generations"}}
    params["pairs"].update(strategy="all", k=None, seed=0, splits=["train"])
    params["train"]["common"].update(max_epochs=2, batch_size=4, val_fraction=0.25)
    # under the server's document root, so Label Studio can serve the renders
    ws = clone_repo(env.document_root / "own-pipeline" / "clone", params)
    t0 = time.perf_counter()
    in_clone(ws, ["bash", "scripts/setup.sh"])  # the README's install, in the clone
    print(f"scripts/setup.sh in the clone: {time.perf_counter() - t0:.1f}s")
    rows = own_generations(ws / "data" / "own")
    ls_env = {"REWARDKIT_LS_CREDENTIALS": str(env.credentials)}

    p = in_clone(ws, dvc_cmd(ws, "repro", "pairs"), extra_env=ls_env)
    assert stages_run(p.stdout + p.stderr) == ["generate", "render", "pairs"]
    items = read_items(ws / "data/items.parquet")
    assert sorted(items["item_id"]) == sorted(r["item_id"] for r in rows)
    banana = items.filter(items["item_id"] == "banana-original").row(0, named=True)
    assert banana["mesh_path"] == str(scan_path("011_banana").resolve()) and banana["generator"] == "lab-gen-v1"
    pairs = read_pairs(ws / "data/pairs.parquet")
    assert pairs.height == 4 * 3 and HELD_OUT not in set(pairs["prompt_id"])  # held out: no pairs

    # the Label Studio round: a project for this repository, one task per pair, annotators answer
    in_clone(ws, ["rewardkit", "annotate", "up", "--url", env.url, "--renders", "data/renders",
                  "--document-root", str(env.document_root), "--title", "own generations"], extra_env=ls_env)
    in_clone(ws, ["rewardkit", "annotate", "push"], extra_env=ls_env)
    client = connect(env.url, env.token)
    project_id = json.loads((ws / ".labelstudio" / "rewardkit-server.json").read_text())["project_id"]
    ui = {"a": "A", "b": "B", "tie": "Tie"}
    tasks = list(client.tasks.list(project=project_id, fields="all"))
    assert sorted(t.data["pair_id"] for t in tasks) == sorted(pairs["pair_id"])
    for task in tasks:  # answered on the displayed sides (left = a, right = b in the labeling UI)
        d = task.data
        client.annotations.create(id=task.id, lead_time=5.0, result=[
            {"type": "choices", "from_name": q, "to_name": {"global": "a_geometry", "local": "a_rgb"}[q],
             "value": {"choices": [ui[own_answer(d["left_item"], d["right_item"], q)]]}} for q in ("global", "local")])
    expected = {(r["pair_id"], q): own_answer(r["item_a"], r["item_b"], q)  # in the pairs table's orientation
                for r in pairs.iter_rows(named=True) for q in ("global", "local")}
    assert len(expected) == 2 * pairs.height

    p = in_clone(ws, dvc_cmd(ws, "repro", "evaluate"), extra_env=ls_env)
    assert stages_run(p.stdout + p.stderr) == ["label", "train_global", "train_local", "export", "evaluate"]
    prefs = read_preferences(ws / "data/preferences.parquet")
    assert set(prefs["source"]) == {"labelstudio"}
    assert {(r["pair_id"], r["question"]): r["label"] for r in prefs.iter_rows(named=True)} == expected
    for stage in ("global", "local"):
        assert (ws / f"data/scorers/{stage}/model.safetensors").is_file()
    m = json.loads((ws / "reports/metrics.json").read_text())
    assert m["holdout_prompts"] == 1 and m["holdout_candidates"] == 3
    for stage in ("global", "local"):  # no recorded degradations: no clean-vs-degraded figures, none made up
        assert m[stage]["holdout_pairs"] == 0 and m[stage]["holdout_owned_accuracy"] is None
        assert m[stage]["val_accuracy"] is not None
    held = (ws / "reports/holdout_scores.csv").read_text().splitlines()
    assert len(held) == 1 + 3 and all(line.split(",")[0].startswith(f"{HELD_OUT}-") for line in held[1:])
    assert (ws / f"reports/plots/grid_00_{HELD_OUT}.png").is_file()
    p = in_clone(ws, ["rewardkit", "score", str(scan_path(held_scan)), "--prompt", held_prompt,
                      "--scorer", "data/scorers", "--json"])
    (result,) = json.loads(p.stdout)["results"]
    assert result["error"] is None and set(result["scores"]) == {"global", "local"}
    # nothing changed: nothing re-runs (the label stage pulls again only when forced: `dvc repro -f -s label`)
    p = in_clone(ws, dvc_cmd(ws, "repro", "evaluate"), extra_env=ls_env)
    assert stages_run(p.stdout + p.stderr) == []
    # a new generation in the folder re-runs the pipeline from `generate`
    with open(ws / "data/own/candidates.csv", "a") as fh:
        fh.write(f"{HELD_OUT}-original-2,{HELD_OUT},{held_prompt},{scan_path(held_scan)},holdout,lab-gen-v2,2\n")
    p = in_clone(ws, dvc_cmd(ws, *DRY_RUN, "evaluate"), extra_env=ls_env)
    assert stages_run(p.stdout + p.stderr)[:2] == ["generate", "render"]


def test_own_generations_table_names_every_problem(tmp_path):
    from rewardkit.data.candidates import read_generations

    mesh = tmp_path / "a.glb"
    import trimesh

    trimesh.creation.box().export(mesh)
    (tmp_path / "candidates.csv").write_text(
        "item_id,mesh_path,prompt,split,seed\n"
        "i1,a.glb,a box,train,0\n"
        "i2,missing.glb,a box,train,0\n"
        "i3,a.glb,a box,later,0\n"
        "i4,a.glb,,train,0\n"
        "i5,a.glb,a box,train,x\n")
    with pytest.raises(ValueError) as e:
        read_generations(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'candidates.csv'}: 4 problem(s)"), msg
    for line, what in ((3, "mesh not found"), (4, "split must be one of"), (5, "empty prompt"),
                       (6, "seed must be an integer")):
        assert f"candidates.csv:{line}: {what}" in msg, msg
    (tmp_path / "candidates.csv").write_text("mesh_path,prompt\na.glb,p\na.glb,p\n")  # same default item_id
    with pytest.raises(ValueError, match=r"candidates.csv:3: duplicate item_id .* \(also row 2\)"):
        read_generations(tmp_path)
    # default ids and splits: a hash of the prompt, stable; holdout_fraction of the prompts held out
    (tmp_path / "candidates.csv").write_text("mesh_path,prompt\n" + "".join(f"a.glb,prompt {i}\n" for i in range(40)))
    items, cands = read_generations(tmp_path, holdout_fraction=0.25, seed=0)
    assert items.height == 40 and items["render_dir"].to_list() == [""] * 40
    assert items["mesh_sha256"].n_unique() == 1 and cands["kind"].unique().to_list() == ["unknown"]
    held = cands.filter(cands["split"] == "holdout").height
    assert 4 <= held <= 16, held
    assert read_generations(tmp_path, holdout_fraction=0.25, seed=0)[1].equals(cands)
    # recorded degradations make the candidates usable by the stand-in annotator and evaluate
    (tmp_path / "candidates.csv").write_text(
        "mesh_path,prompt,prompt_id,geometry_degradation,texture_degradation\n"
        "a.glb,a box,p,none,none\na.glb,a box,p2,missing_part,none\na.glb,a box,p3,missing_part,blur\n")
    _, cands = read_generations(tmp_path)
    assert cands["degradation"].to_list() == ["clean", "missing_part", "missing_part+blur"]
    assert cands["kind"].to_list() == ["none", "geometry", "both"]


def test_eval_gen_params_are_heldout_prompts_of_demo_shapes_and_the_report_helpers():
    from rewardkit.config import ConfigError
    from rewardkit.eval.generation.protocol import EvalGenConfig
    from rewardkit.rl.generation_eval import change, heldout_prompts

    for section in (yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL_PARAMS):
        ev, rl = section["eval_gen"], section["rl"]
        rows = heldout_prompts(ev, rl["prompts"])
        assert len(rows) == len(ev["prompts"]) and all(r["category"] for r in rows)
        cfg = EvalGenConfig.from_dict(ev["protocol"])
        assert cfg.shading == "untextured" and cfg.kd.subsets >= 10
    with pytest.raises(ConfigError, match="is an rl training prompt"):
        heldout_prompts({"prompts": [{"prompt": "a cube", "shape": "cube", "category": "x"}]}, ["a cube"])
    with pytest.raises(ConfigError, match="shape must be one of"):
        heldout_prompts({"prompts": [{"prompt": "a dog", "shape": "dog", "category": "x"}]}, [])
    init = {"overall": {"fd_incep": 2.0, "kd_incep_x100": 0.5, "kd_incep_x100_std": 0.1, "objects": 4}}
    final = {"overall": {"fd_incep": 1.5, "kd_incep_x100": 0.25, "kd_incep_x100_std": 0.1, "objects": 4}}
    assert change(init, final) == {"fd_incep": -0.5, "kd_incep_x100": -0.25}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_round_two_runs_the_loop_on_the_policys_samples(pipeline_run):
    """The loop's next round through DVC (docs/active-learning.md), in the CI clone after round 1:
    round 1's rl writes the policy's samples as candidates; `rewardkit annotate hand-over` puts them, round
    1's scorers (ensembles: export.ensemble.members 3), pairs, answers, items and renders in
    data/previous_round; with generate.source own on those
    samples and pairs.strategy active, `dvc repro rl` runs round 2 through generate, render, pairs (k new
    pairs, per-prompt capped), label (the anchor rules: the samples record no degradations), train (on
    both rounds' labels), export and rl again. Runs last on the shared clone and puts it back."""
    import polars as pl

    ws, _, _ = pipeline_run
    prev = ws / "data" / "previous_round"
    cfg = json.loads((ws / "data" / "scorers" / "global" / "config.json").read_text())
    assert cfg["kind"] == "stage-ensemble" and cfg["architecture"]["members"] == 3
    round1_pairs = pl.read_parquet(ws / "data" / "pairs.parquet")
    round1_global = (ws / "data" / "scorers" / "global" / "model.safetensors").read_bytes()
    try:
        # round 1's rl again, writing its samples (every step's, and the before/after evaluation ones)
        set_params(ws, lambda p: p["rl"].update(candidates={"every": 1, "eval": True, "meshes": "both"}))
        p = in_clone(ws, dvc_cmd(ws, "repro", "rl"))
        assert stages_run(p.stdout + p.stderr) == ["rl"], (p.stdout + p.stderr)[-3000:]
        samples = ws / "data" / "rl" / "candidates"
        rows = pl.read_csv(samples / "candidates.csv")
        assert rows.height > 0 and set(rows["mesh"]) == {"coarse", "refined"}
        # hand round 1 to round 2 (the command the docs give)
        p = in_clone(ws, [py(ws), "-m", "rewardkit", "annotate", "hand-over"])
        assert "round 1 handed over" in p.stdout and "the policy's samples in" in p.stdout, p.stdout + p.stderr
        handed = pl.read_parquet(prev / "items.parquet")
        assert set(handed["item_id"]) == set(round1_pairs["item_a"]) | set(round1_pairs["item_b"])
        assert all((ws / d / "meta.json").is_file() and d.startswith("data/previous_round/renders/")
                   for d in handed["render_dir"])
        assert (prev / "scorers" / "config.json").is_file() and (prev / "candidates" / "candidates.csv").is_file()

        def round_two(p):
            p["generate"].update(source="own", own={"dir": "data/previous_round/candidates", "holdout_fraction": 0.0,
                                                    "seed": 0})
            p["pairs"].update(strategy="active")
            p["pairs"]["active"].update(k=24, per_prompt_cap=8)
            p["train"]["common"].update(max_epochs=3)  # round 1's 336 pairs and round 2's: fewer epochs in CI

        set_params(ws, round_two)
        p = in_clone(ws, dvc_cmd(ws, "repro", "rl"))
        out = p.stdout + p.stderr
        assert stages_run(out) == ["generate", "render", "pairs", "label", "train_global", "train_local", "export",
                                   "rl"], out[-3000:]
        assert "active:" in out and "rules: anchors" in out
        items = pl.read_parquet(ws / "data" / "items.parquet")
        assert set(items["item_id"]) == set(rows["item_id"])  # round 2's candidates are the policy's samples
        pairs = pl.read_parquet(ws / "data" / "pairs.parquet")
        assert 0 < pairs.height <= 24 and not set(pairs["pair_id"]) & set(round1_pairs["pair_id"])
        assert set(pairs["item_a"]) | set(pairs["item_b"]) <= set(rows["item_id"])
        assert pairs.group_by("prompt_id").len()["len"].max() <= 8
        prefs = pl.read_parquet(ws / "data" / "preferences.parquet")
        assert set(prefs["pair_id"]) == set(pairs["pair_id"]) and set(prefs["annotator"]) == {"anchor-rules"}
        assert set(prefs["source"]) == {"synthetic"} and len(set(prefs["label"])) > 1
        # retrained on both rounds' labels (train.include_previous), exported and used by RL again
        assert "with the earlier rounds in data/previous_round: +" in out
        for stage in ("global", "local"):
            report = json.loads((ws / f"reports/train_{stage}.json").read_text())
            assert report["previous_pairs"] == round1_pairs.height, report
        assert (ws / "data" / "scorers" / "global" / "model.safetensors").read_bytes() != round1_global
        records = [json.loads(line) for line in (ws / "data/rl/metrics.jsonl").read_text().splitlines()]
        assert len(records) == SMALL_PARAMS["rl"]["steps"]
        assert all(r["global/global_scorer"] == r["global/global_scorer"] for r in records)  # scored, not NaN
    finally:
        for d in ("candidates", "scorers", "renders"):
            shutil.rmtree(prev / d, ignore_errors=True)
        for f in ("pairs.parquet", "preferences.parquet", "items.parquet", "rounds.json"):
            (prev / f).unlink(missing_ok=True)
        git(["checkout", "params.yaml", "dvc.lock"], ws)
        in_clone(ws, dvc_cmd(ws, "checkout", "-f"), check=False)
