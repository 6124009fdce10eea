"""Closing the loop in Hi-GRPO: the policy's samples as candidates, the reward-hacking guard (agreement of a
learned term with its anchors, the rises-while-anchors-fall flag, uncertainty), the uncertainty-penalised
reward and the audit; and the demo's failure built on purpose: a policy that answers "a tall cylinder" with
the arch, scored by the real occupancy IoU and a real learned scorer trained to prefer the arch."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from rewardkit.data.candidates import prompt_id_of, read_generations
from rewardkit.data.tables import read_pairs
from rewardkit.rl.guards import GuardConfig, HackingGuard, audit_selection, group_agreement, spearman
from rewardkit.rl.records import GroupRollout, StepSamples
from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import RewardError, RewardTermConfig, StepReward, TermValues, build_step_reward, build_term, occupancy_iou, surface_f1
from rewardkit.demo.shapes import demo_shape, jitter
from rewardkit.rl.tokenizers import occupancy_to_mesh
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

torch.set_num_threads(1)


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks (0.5, 0.5, 2, 3) vs (0, 1, 2, 3)
    r = np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1]
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(r)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no order
    assert np.isnan(spearman([1, 2, np.nan, 4], [1, 2, 3, np.nan]))  # two finite pairs are too few
    # groups where it is defined are averaged, the others left out
    assert group_agreement([[1, 2, 3], [1, 1, 1], [1, 2, 3]], [[1, 2, 3], [3, 2, 1], [3, 2, 1]]) == pytest.approx(0.0)
    assert np.isnan(group_agreement([[1, 1, 1]], [[1, 2, 3]]))


def _ens(meshes, prompts):
    """Two real rewards as a two-member 'ensemble': their mean and std per sample."""
    a, b = np.array(occupancy_iou(8)(meshes, prompts)), np.array(surface_f1(8)(meshes, prompts))
    return TermValues(mean=list((a + b) / 2), std=list(np.abs(a - b) / 2))


def test_uncertainty_penalised_reward():
    cube, ball = (occupancy_to_mesh(demo_shape(s).occupancy(8)) for s in ("cube", "sphere"))
    meshes, prompts = [cube, ball], ["a cube", "a cube"]
    ens = _ens(meshes, prompts)
    step = build_step_reward([{"name": "ens", "callable": _ens, "weight": 2.0, "dims": 4.0, "uncertainty_penalty": 0.5}])
    res = step(meshes, prompts)
    mean, std = np.array(ens.mean), np.array(ens.std)
    assert std[1] > 0  # the ball is not a cube by either reward, by different amounts
    assert res.total == pytest.approx(2.0 * (mean - 0.5 * std) / 4.0)
    assert res.terms["ens"] == pytest.approx(mean) and res.stds["ens"] == pytest.approx(std)  # raw values logged
    assert build_term({"callable": _ens}).learned is False and build_term({"callable": _ens, "learned": True}).learned
    with pytest.raises(RewardError, match="returns no std"):
        build_step_reward([{"builtin": "occupancy_iou", "uncertainty_penalty": 1.0}])(meshes, prompts)
    with pytest.raises(ValueError, match="uncertainty_penalty must be >= 0"):
        build_term({"builtin": "occupancy_iou", "uncertainty_penalty": -1})


def _record(prompt, terms, reward=None):
    """A group record with the global step's ``terms`` (and ``reward``) only: what the guard and audit read."""
    n = len(next(iter(terms.values()))) if terms else len(reward)
    r = np.zeros(n) if reward is None else np.asarray(reward, float)
    return GroupRollout(prompt=prompt, steps={
        "global": StepSamples(sequences=[], meshes=[None] * n, reward=r, terms=terms),
        "local": StepSamples(sequences=[], meshes=[None] * n, reward=np.zeros(n))})


def _groups(prompt, learned, anchor):
    """One step's groups as data: per group the learned term 'g' and the anchor term 'a' of the global step."""
    return [_record(prompt, {"g": np.asarray(lr, float), "a": np.asarray(a, float)}) for lr, a in zip(learned, anchor)]


def _terms(learned=True):
    return {"global": [SimpleNamespace(name="g", weight=0.5, dims=1.0, learned=learned),
                       SimpleNamespace(name="a", weight=1.0, dims=1.0, learned=False)], "local": []}


def test_guard_flags_a_learned_term_rising_while_its_anchor_falls(caplog):
    guard = HackingGuard(GuardConfig(window=2, min_change=0.25), _terms())
    assert guard.anchors == {"global/g": ["global/a"]}
    rng = np.random.default_rng(0)
    flags = []
    with caplog.at_level(logging.WARNING, logger="rewardkit.rl.guards"):
        for t in range(6):
            noise = rng.normal(0, 0.05, 4)
            up = 0.3 * max(0, t - 1)  # from step 3 on the learned term climbs, the anchor drops
            m = guard.update(t + 1, _groups("p", [noise + up], [0.8 - noise - up]))
            flags.append(m["guard/global/g/flag"])
            assert m["guard/global/g/agreement"] == pytest.approx(-1.0)  # opposite orders within the group
    assert flags[:3] == [0.0, 0.0, 0.0] and flags[3:] == [1.0, 1.0, 1.0]  # needs 2 windows of history
    assert m["guard/global/g/flagged_prompts"] == 1.0
    assert {e["prompt"] for e in guard.events} == {"p", "(batch)"}
    assert "global/g rises" in caplog.text and "on p" in caplog.text
    # both rising together (the policy got better at both) is no flag
    calm = HackingGuard(GuardConfig(window=2), _terms())
    for t in range(6):
        m = calm.update(t + 1, _groups("p", [np.arange(4) * 0.1 + 0.3 * t], [np.arange(4) * 0.1 + 0.3 * t]))
        assert m["guard/global/g/flag"] == 0.0 and m["guard/global/g/agreement"] == pytest.approx(1.0)
    # unknown names are configuration errors; no learned term: nothing to watch
    with pytest.raises(ValueError, match="unknown terms"):
        HackingGuard(GuardConfig(learned=["global/nope"]), _terms())
    with pytest.raises(ValueError, match="not other terms"):
        HackingGuard(GuardConfig(learned=["global/g"], anchors={"global/g": ["global/g"]}), _terms())
    assert HackingGuard(GuardConfig(), _terms(learned=False)).update(1, _groups("p", [[1, 2]], [[1, 2]])) == {}


def test_guard_flags_an_uncertainty_jump():
    guard = HackingGuard(GuardConfig(window=2, std_jump=2.0), _terms())
    out = []
    for t, s in enumerate([0.1, 0.1, 0.12, 0.3]):
        g = _groups("p", [[1, 2, 3]], [[1, 2, 3]])
        g[0].steps["global"].term_stds = {"g": np.full(3, s)}
        out.append(guard.update(t + 1, g)["guard/global/g/flag"])
    assert out == [0.0, 0.0, 0.0, 1.0]
    assert guard.events[-1]["reason"] == "uncertainty" and guard.events[-1]["std_last"] == pytest.approx(0.21)


def test_audit_picks_the_best_and_worst_of_the_top_groups():
    gs = [_record("p", {}, reward=r) for r in ([0.1, 0.9, 0.5], [np.nan, 2.0, 0.0], [1.0, 1.0, 1.0], [0.3, np.nan, np.nan])]
    assert audit_selection(gs, 2) == [(1, 1, 2), (0, 1, 0)]  # flat and single-valid groups are skipped


def _trainer(tmp_path, **kw) -> HiGRPOTrainer:
    build_tiny_policy(tmp_path / "p", ["a", "cube", "ball", "plan"], codebook_size=256, tokens_per_object=8,
                      hidden_size=32, num_layers=1, num_heads=2)
    return HiGRPOTrainer(HiGRPOConfig.from_dict(dict(
        policy_path=str(tmp_path / "p"), tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 4, "block": 2},
        prompts=["a cube", "a ball"], sampling={"max_reasoning_tokens": 2}, group_size=3, prompts_per_step=2, lr=1e-3,
        rewards_global=[{"name": "iou", "builtin": "occupancy_iou"},
                      {"name": "ens", "callable": _ens, "learned": True, "uncertainty_penalty": 0.5, "weight": 0.5}],
        rewards_local=[{"name": "sym", "builtin": "mirror_symmetry"}], reward_on_error="mark",
        output_dir=str(tmp_path / "run"), save_every=0, eval_group_size=2, render=False, accelerator="cpu",
        num_threads=1, dynamic_sampling=False, **kw)))


def test_trainer_writes_candidates_guard_metrics_and_audit(tmp_path):
    t = _trainer(tmp_path, steps=2, candidates={"every": 1, "eval": True, "meshes": "both"},
                 guard={"window": 1, "audit_every": 2, "audit_top_k": 1})
    summary = t.train()
    run = tmp_path / "run"
    for r in t.records:  # per-term means, within-group stds, the ensemble std and the guard, every step
        for k in ("global/iou", "global/ens", "global/ens_group_std", "global/ens_uncertainty", "guard/global/ens/agreement",
                  "guard/global/ens/flag", "guard/global/ens/flagged_prompts"):
            assert k in r, (k, r)
    assert summary["guard"]["global/ens"]["anchors"] == ["global/iou"]
    # the candidates folder is an own-generations folder as it is
    items, _cands = read_generations(run / "candidates", generator="x")
    csv = pl.read_csv(run / "candidates" / "candidates.csv")
    tags = {p.split("/")[0] for p in csv["mesh_path"]}
    assert tags >= {"eval-step-0000", "eval-step-0002", "train-step-0000", "train-step-0001"}
    assert items.height == csv.height and items["item_id"].n_unique() == csv.height
    assert set(items["generator"]) == {f"{tmp_path / 'p'}@step-{n}" for n in (0, 1, 2)}  # the CSV's, not the default
    assert set(csv["mesh"]) == {"coarse", "refined"} and set(csv["step"]) == {0, 1, 2}
    assert set(items["prompt_id"]) == {prompt_id_of("a cube"), prompt_id_of("a ball")}
    assert {"seed", "global/reward", "local/reward", "global/iou", "global/ens", "global/ens_std", "local/sym"} <= set(csv.columns)
    # every row's global reward is its terms' penalised, weighted sum: iou + 0.5 * (ens - 0.5 * ens_std)
    assert csv["global/reward"].to_numpy() == pytest.approx(
        (csv["global/iou"] + 0.5 * (csv["global/ens"] - 0.5 * csv["global/ens_std"])).to_numpy(), abs=1e-4)
    # the audit of step 2: the best and the worst sample of the best group, as candidates + a pairs table
    audit = run / "audit" / "step-0002"
    a_items, _ = read_generations(audit)
    pairs = read_pairs(audit / "pairs.parquet")
    assert a_items.height == 4 and pairs.height == 2  # 2 samples x 2 meshes; coarse pair + refined pair
    assert set(pairs["item_a"]) | set(pairs["item_b"]) == set(a_items["item_id"])
    assert pairs["prompt_id"].n_unique() == 1 and pairs["prompt_id"][0] in set(a_items["prompt_id"])
    assert not (run / "audit" / "step-0001").exists()
    before = json.loads((run / "samples_before" / "samples.json").read_text())
    assert [r["prompt"] for r in before["per_prompt"]] == ["a cube", "a ball"] and "global/ens" in before["per_prompt"][0]


# -- the constructed collapse: "a tall cylinder" answered with the arch -----------------------------------
CYL, ARCH = "a tall cylinder", "an arch"


def _shape_meshes(name: str, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    occ = demo_shape(name).occupancy(8)
    return [occupancy_to_mesh(jitter(occ, rng, max_shift=1)) for _ in range(n)]


def _arch_loving_scorer(root):
    """A real global scorer trained (rewardkit.train, rk-tiny) on preferences that always prefer the arch
    to the cylinder for "a tall cylinder": the learned term that rewards the collapse."""
    from rewardkit.io import from_trimesh
    from rewardkit.render import Renderer, get_protocol, render_to_dir
    from rewardkit.scoring import Scorer
    from rewardkit.train import TrainConfig, train
    from rewardkit.data.tables import write_table

    protocol = get_protocol("orbit4", size=64)
    items, pairs, prefs = [], [], []
    with Renderer(size=64) as renderer:
        for p in range(8):
            pid = f"q{p}"
            ids = {}
            for kind, meshes in (("arch", _shape_meshes("arch", 2, 10 + p)), ("cyl", _shape_meshes("cylinder", 2, 50 + p))):
                for j, m in enumerate(meshes):
                    iid = f"{pid}-{kind}{j}"
                    render_to_dir(from_trimesh(m, name=iid), root / "renders" / iid, protocol=protocol,
                                  modes=("geometry",), renderer=renderer, grid=False)
                    items.append({"item_id": iid, "prompt_id": pid, "prompt": CYL, "mesh_path": f"<voxels>/{iid}",
                                  "mesh_sha256": "", "generator": "scripted", "seed": p, "render_dir": f"renders/{iid}"})
                    ids.setdefault(kind, []).append(iid)
            for a in ids["arch"]:
                for c in ids["cyl"]:
                    pair = f"{a}-{c}"
                    pairs.append({"pair_id": pair, "prompt_id": pid, "item_a": a, "item_b": c})
                    prefs.append({"pair_id": pair, "question": "global", "label": "a", "annotator": "biased",
                                  "lead_time_s": 1.0, "created_at": "2026-01-01T00:00:00Z", "source": "synthetic"})
    for name, rows in (("items", items), ("pairs", pairs), ("preferences", prefs)):
        write_table(pl.DataFrame(rows), root / f"{name}.parquet", name)
    cfg = TrainConfig.from_dict({
        "stage": "global", "items": str(root / "items.parquet"), "pairs": str(root / "pairs.parquet"),
        "preferences": str(root / "preferences.parquet"), "out_dir": str(root / "train"),
        "model": {"backbone": {"name": "rk-tiny", "image_size": 32}}, "image_size": 32, "batch_size": 16,
        "lr": 3e-3, "val_fraction": 0.25, "num_threads": 1, "max_epochs": 8, "progress_bar": False,
        "tensorboard": False, "log_every_n_steps": 5,
    })
    result = train(cfg)
    return Scorer(result.module.model.eval(), camera="orbit4", render_size=64)


@pytest.mark.slow
def test_the_constructed_collapse_is_flagged(tmp_path, caplog):
    """A scripted policy drifts from cylinders to arches on the cylinder prompt (one more arch per group each
    step after the first four) while the other prompt stays put. Through the real IoU anchor and a real
    learned scorer term that rewards the arch, the guard flags the cylinder prompt, and only it."""
    scorer = _arch_loving_scorer(tmp_path)
    reward = StepReward([build_term({"name": "shape_iou", "builtin": "occupancy_iou", "args": {"resolution": 8}}),
                         # a loaded scorer object (Python only; a config names a folder)
                         build_term(RewardTermConfig(name="global_scorer", scorer=scorer, weight=0.5,
                                                     args={"stage": "global"}))])
    # the learned term really prefers the arch for the cylinder prompt, and the anchor really does not
    probe = reward(_shape_meshes("cylinder", 4, 900) + _shape_meshes("arch", 4, 901), [CYL] * 8)
    assert probe.terms["global_scorer"][4:].min() > probe.terms["global_scorer"][:4].max()
    assert probe.terms["shape_iou"][4:].max() < probe.terms["shape_iou"][:4].min()

    G, guard = 4, HackingGuard(GuardConfig(window=3, min_change=0.25), {"global": reward.terms, "local": []})
    assert guard.anchors == {"global/global_scorer": ["global/shape_iou"]}
    flags, cyl_flagged, mixed_agreement = [], [], []
    with caplog.at_level(logging.WARNING, logger="rewardkit.rl.guards"):
        for t in range(14):
            arches = min(G, max(0, t - 7))  # steps 1-8: all cylinders, then one more arch per step
            cyl = _shape_meshes("arch", arches, 100 + t) + _shape_meshes("cylinder", G - arches, 200 + t)
            cube = _shape_meshes("cube", G, 300 + t)
            res = reward(cyl + cube, [CYL] * G + ["a cube"] * G)
            groups = [_record(p, {k: v[sl] for k, v in res.terms.items()})
                      for p, sl in ((CYL, slice(0, G)), ("a cube", slice(G, 2 * G)))]
            m = guard.update(t + 1, groups)
            flags.append(m["guard/global/global_scorer/flag"])
            cyl_flagged.append(any(e["step"] == t + 1 and e["prompt"] == CYL for e in guard.events))
            if 0 < arches < G:  # a group of arches and cylinders: the scorer orders it against the IoU
                mixed_agreement.append(spearman(res.terms["global_scorer"][:G], res.terms["shape_iou"][:G]))
    assert flags[:8] == [0.0] * 8  # no flag while the policy keeps answering with cylinders
    assert all(cyl_flagged[9:13]) and flags[-1] == 1.0  # flagged while the arches take over
    assert {e["prompt"] for e in guard.events} <= {CYL, "(batch)"}  # the cube prompt never
    assert mixed_agreement and max(mixed_agreement) < 0
    assert f"on {CYL}" in caplog.text
