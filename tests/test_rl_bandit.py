"""Hi-GRPO trainer end to end on tiny policies: the policy measurably improves its expected reward,
dynamic sampling drops zero-variance groups, reward failures raise or are masked, resume repeats the
next step exactly, and ``rewardkit rl --config`` writes its artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import RewardError, RewardTerm, StepReward, occupied_fraction
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

torch.set_num_threads(1)

PROMPTS = ["fill", "grow"]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    # 2^3 grid, one voxel per token: 8 tokens per object, codebook 2 (<mesh0> empty, <mesh1> full)
    path = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_policy(path, ["plan", "fill", "grow", "detail", "big", "small"], codebook_size=2, tokens_per_object=8,
                      hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return path


def _config(policy, out, **kw) -> HiGRPOConfig:
    base = dict(
        policy_path=str(policy), tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 2, "block": 1},
        prompts=PROMPTS, step1_template="plan {prompt}", step2_template="detail {prompt} {plan}",
        sampling={"max_reasoning_tokens": 2}, group_size=8, prompts_per_step=2, lr=0.03, beta=0.01, mu=2,
        steps=10, output_dir=str(out), save_every=0, eval_group_size=0, render=False, accelerator="cpu",
        num_threads=1, micro_batch_size=16, seed=0,
    )
    base.update(kw)
    return HiGRPOConfig.from_dict(base)


def _fraction() -> StepReward:
    return StepReward([RewardTerm("occupied", occupied_fraction(2))])


def _expected_reward(trainer: HiGRPOTrainer) -> tuple[float, float]:
    groups = trainer.rollout(PROMPTS, 64, seed=12345)
    return float(np.mean([g.steps["global"].reward for g in groups])), float(np.mean([g.steps["local"].reward for g in groups]))


def test_policy_increases_expected_reward(tiny_policy, tmp_path):
    # global step: occupied fraction of the coarse shape; local step: occupied fraction of the refined one
    trainer = HiGRPOTrainer(_config(tiny_policy, tmp_path), rewards_global=_fraction(), rewards_local=_fraction())
    before = _expected_reward(trainer)
    trainer.train(steps=10)
    after = _expected_reward(trainer)
    assert after[0] > before[0] + 0.15, (before, after)
    assert after[1] > before[1] + 0.15, (before, after)
    # logs: one row per step, every reward term with mean and within-group std
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    # (the loss terms of the last step that trained: a step whose groups were all flat, as this policy's can be
    # once it fills every shape, drops them all and logs no loss)
    trained = [r for r in rows if r["groups_kept"] > 0]
    assert trained and all("groups_dropped" in r for r in rows)
    for key in ("global/reward", "local/reward", "global/occupied", "global/occupied_group_std", "local/occupied_group_std",
                "global/kl", "local/clip_high_frac"):
        assert key in trained[-1], key
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["global/reward_rose"] and summary["local/reward_rose"]
    assert (tmp_path / "reward_curve.png").stat().st_size > 0
    assert (tmp_path / "policy" / "config.json").exists()  # the trained policy is a HF checkpoint


def _flat_or_varied() -> StepReward:
    frac = occupied_fraction(2)

    def fn(meshes, prompts):
        v = frac(meshes, prompts)
        return [1.0 if p == "fill" else x for p, x in zip(prompts, v)]

    return StepReward([RewardTerm("flat_or_varied", fn)])


def test_dynamic_sampling_drops_zero_variance_groups_and_refills(tiny_policy, tmp_path):
    cfg = _config(tiny_policy, tmp_path, prompts_per_step=2, max_sampling_rounds=3)
    trainer = HiGRPOTrainer(cfg, rewards_global=_flat_or_varied(), rewards_local=_flat_or_varied())
    kept, info = trainer.collect(step=0)
    flat = sum(g.prompt == "fill" for g in info["sampled"])
    assert flat >= 1  # the flat prompt was drawn ...
    assert all(g.prompt == "grow" for g in kept)  # ... and dropped; the refill rounds drew "grow" again
    assert info["groups_dropped"] == flat and info["sampling_rounds"] >= 2
    assert len(kept) == 2

    off = HiGRPOTrainer(_config(tiny_policy, tmp_path / "off", dynamic_sampling=False),
                        rewards_global=_flat_or_varied(), rewards_local=_flat_or_varied())
    kept_off, info_off = off.collect(step=0)
    assert {g.prompt for g in kept_off} == set(PROMPTS) and info_off["groups_dropped"] == 0

    # nothing but flat groups: the step is skipped (no update), not crashed
    only_flat = HiGRPOTrainer(_config(tiny_policy, tmp_path / "flat", prompts=["fill"], prompts_per_step=1),
                              rewards_global=_flat_or_varied(), rewards_local=_flat_or_varied())
    before = [p.detach().clone() for p in only_flat.model.parameters()]
    m = only_flat.train_step()
    assert m["groups_kept"] == 0 and "loss" not in m
    assert all(torch.equal(a, b) for a, b in zip(before, only_flat.model.parameters()))


def _near_flat(spread: float) -> StepReward:
    """Continuous rewards: "fill" gets 0.5 plus noise of std ``spread`` (never exactly equal), "grow" the
    occupied fraction (a real spread)."""
    frac = occupied_fraction(2)
    rng = np.random.default_rng(0)

    def fn(meshes, prompts):
        v = frac(meshes, prompts)
        return [0.5 + spread * float(rng.standard_normal()) if p == "fill" else x for p, x in zip(prompts, v)]

    return StepReward([RewardTerm("near_flat", fn)])


def test_dynamic_sampling_drops_near_flat_continuous_groups(tiny_policy, tmp_path):
    # a group whose rewards differ by 1e-7 carries no signal: the default tolerance drops it
    t = HiGRPOTrainer(_config(tiny_policy, tmp_path, prompts_per_step=2, max_sampling_rounds=3),
                      rewards_global=_near_flat(1e-7), rewards_local=_near_flat(1e-7))
    kept, info = t.collect(step=0)
    n_fill = sum(g.prompt == "fill" for g in info["sampled"])
    assert n_fill >= 1 and all(g.prompt == "grow" for g in kept)
    assert info["groups_dropped_flat"] == n_fill == info["groups_dropped"]
    # round 0 draws both prompts and keeps "grow"; every other kept group came from a refill round
    assert info["groups_refilled"] == len(kept) - 1 and info["sampling_rounds"] >= 2
    # min_std 0 is the exact-equality rule: near-equal continuous rewards pass it
    exact = HiGRPOTrainer(_config(tiny_policy, tmp_path / "exact", dynamic_sampling_min_std=0.0),
                          rewards_global=_near_flat(1e-7), rewards_local=_near_flat(1e-7))
    _, info0 = exact.collect(step=0)
    assert info0["groups_dropped"] == 0


def test_dynamic_sampling_reward_range_filter(tiny_policy, tmp_path):
    # "fill" has a real spread (std 0.05) around R~_high = 0.5 + 0.5: a range of [1.5, 10] drops it
    cfg = _config(tiny_policy, tmp_path, prompts=["fill"], prompts_per_step=1, max_sampling_rounds=2,
                  dynamic_sampling_reward_range=[1.5, 10.0])
    t = HiGRPOTrainer(cfg, rewards_global=_near_flat(0.05), rewards_local=_near_flat(0.05))
    kept, info = t.collect(step=0)
    assert kept == [] and info["groups_dropped_range"] == 2 and info["groups_dropped_flat"] == 0
    wide = HiGRPOTrainer(_config(tiny_policy, tmp_path / "wide", prompts=["fill"], prompts_per_step=1,
                                 dynamic_sampling_reward_range=[0.0, 10.0]),
                         rewards_global=_near_flat(0.05), rewards_local=_near_flat(0.05))
    kept, info = wide.collect(step=0)
    assert len(kept) == 1 and info["groups_dropped"] == 0
    m = wide.train_step()
    for key in ("groups_dropped_flat", "groups_dropped_range", "groups_refilled"):
        assert key in m


def test_failed_reward_raises_or_is_masked(tiny_policy, tmp_path):
    def flaky(meshes, prompts):
        return [None if i % 3 == 0 else 0.5 + 0.1 * (i % 2) for i in range(len(meshes))]

    def broken(meshes, prompts):
        raise ConnectionError("scorer service down")

    with pytest.raises(RewardError, match="broken"):
        StepReward([RewardTerm("broken", broken)])([None, None], ["a", "b"])
    with pytest.raises(RewardError, match="no value"):
        StepReward([RewardTerm("flaky", flaky)])([None] * 3, ["a"] * 3)
    res = StepReward([RewardTerm("broken", broken)], on_error="mark")([None, None], ["a", "b"])
    assert np.isnan(res.total).all() and res.failures == {"broken": 2}

    cfg = _config(tiny_policy, tmp_path, reward_on_error="mark")
    trainer = HiGRPOTrainer(cfg, rewards_global=StepReward([RewardTerm("flaky", flaky)], on_error="mark"), rewards_local=_fraction())
    m = trainer.train_step()
    assert m["failed/global/flaky"] > 0
    assert np.isfinite(m["loss"]) and m["global/tokens"] < m["local/tokens"]  # failed samples' step-1 tokens masked

    strict = HiGRPOTrainer(_config(tiny_policy, tmp_path / "strict"),
                           rewards_global=StepReward([RewardTerm("broken", broken)]), rewards_local=_fraction())
    with pytest.raises(RewardError):
        strict.train_step()


def test_resume_gives_the_same_next_step(tiny_policy, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = HiGRPOTrainer(_config(tiny_policy, a_dir, save_every=2), rewards_global=_fraction(), rewards_local=_fraction())
    a.train(steps=2)
    shutil.copytree(a_dir, b_dir)
    next_a = a.train_step()

    b = HiGRPOTrainer(_config(tiny_policy, b_dir, save_every=2), rewards_global=_fraction(), rewards_local=_fraction())
    assert b.load_checkpoint() == 2 and len(b.records) == 2
    next_b = b.train_step()
    assert next_b["step"] == next_a["step"] == 3
    for key in ("global/reward", "local/reward", "loss", "global/kl", "local/ratio_mean", "grad_norm"):
        assert next_b[key] == pytest.approx(next_a[key], rel=1e-6, abs=1e-9), key
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_cli_runs_end_to_end_with_warm_start(tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main

    cfg = {
        "policy_path": str(tmp_path / "init"),
        "tokens_per_object": 8,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
        "prompts": ["a cube", "a ball"],
        "sampling": {"max_reasoning_tokens": 4},
        "rewards_global": [{"builtin": "occupancy_iou"}],
        "rewards_local": [{"builtin": "surface_f1"}, {"name": "sym", "builtin": "mirror_symmetry", "weight": 0.5}],
        "group_size": 4, "prompts_per_step": 2, "lr": 0.001, "steps": 2, "save_every": 1,
        "output_dir": str(tmp_path / "run"), "eval_group_size": 2, "render_size": 64,
        "accelerator": "cpu", "num_threads": 1,
        "warm_start": {"enabled": True, "arch": "qwen2_5_vl", "shapes": ["cube", "sphere"], "steps": 10, "hidden_size": 32,
                       "num_layers": 1},
    }
    path = tmp_path / "rl.yaml"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["rl", "--config", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for f in ("metrics.jsonl", "metrics.csv", "metrics.json", "reward_curve.png", "config.json",
              "samples_before/samples.json", "samples_after/samples.json", "samples_before/renders.png",
              "samples_after/renders.png", "policy/config.json", "checkpoints/latest"):
        assert (run / f).exists(), f
    assert (tmp_path / "init" / "warm_start.json").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "local/sym_group_std" in rows[-1] and "global/occupancy_iou" in rows[-1]
    # running again resumes from the last checkpoint and has nothing left to do
    again = CliRunner().invoke(main, ["rl", "--config", str(path)])
    assert again.exit_code == 0, again.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def _run_ddp(tmp_path, timeout: float = 300, **overrides) -> list[dict]:
    """``rewardkit rl`` with a 2-process DDP config (gloo) on a warm-started tiny policy; the metric rows."""
    from helpers.rl_runs import metric_rows, rl_config, run_rl

    run_rl(tmp_path, rl_config(tmp_path, **overrides), timeout=timeout, name="ddp")
    return metric_rows(tmp_path / "run")


@pytest.mark.slow
def test_two_process_ddp_by_config_alone(tmp_path):
    """devices/strategy in the config are all it takes (here 2 CPU processes, gloo; GPUs work the same)."""
    rows = _run_ddp(tmp_path, timeout=240)
    assert [r["step"] for r in rows] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "policy" / "config.json").exists()


@pytest.mark.slow
def test_two_process_ddp_qwen2_5_vl_freezes_the_vision_tower(tmp_path):
    """ShapeLLM-Omni's architecture under 2-process DDP (gloo): the text-only rollout never uses the vision
    tower, so unfrozen it fails DDP's unused-parameter check; the default freezes it and lm_head, as
    AR3D-R1's release does, and trains the rest."""
    from safetensors.torch import load_file

    rows = _run_ddp(tmp_path, lr=0.01, save_every=0, warm_start={"arch": "qwen2_5_vl"})
    assert [r["step"] for r in rows] == [1, 2]
    before = load_file(str(tmp_path / "init" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "policy" / "model.safetensors"))
    vision = [k for k in before if ".visual." in f".{k}"]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    trained = [k for k in before if k not in vision and k != "lm_head.weight"]
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_freeze_groups_and_patterns(tiny_policy):
    from rewardkit.rl.freezing import default_freeze, freeze_parameters
    from rewardkit.rl.policy import MeshPolicy

    model = MeshPolicy.from_pretrained(tiny_policy).model  # llama: nothing frozen by default
    assert default_freeze(model) == [] and freeze_parameters(model, None) == []
    names = freeze_parameters(model, ["embeddings", "model.layers.0.mlp.*"])
    assert "model.embed_tokens.weight" in names and any(n.startswith("model.layers.0.mlp.") for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in names)
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_parameters(model, ["vision_tower"])


def test_shipped_configs_and_params_yaml_section(tmp_path):
    from pathlib import Path

    import rewardkit.rl
    from rewardkit.rl.trainer import load_config

    cfg_dir = Path(rewardkit.rl.__file__).parent / "configs"
    for name in ("demo.json", "demo_scorers.json"):
        cfg = load_config(cfg_dir / name)
        assert cfg.warm_start.enabled and cfg.tokens_per_object == 64 and cfg.rewards_global and cfg.rewards_local
    assert any(t.scorer for t in load_config(cfg_dir / "demo_scorers.json").rewards_global)
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 1}\nrl:\n  policy_path: p\n  prompts: [a cube]\n  beta: 0.02\n  sampling: {top_p: 0.7}\n")
    cfg = load_config(params, {"steps": 3})
    assert (cfg.policy_path, cfg.beta, cfg.sampling.top_p, cfg.steps, cfg.group_size, cfg.lr) == ("p", 0.02, 0.7, 3, 8, 1e-6)
    with pytest.raises(ValueError, match="unknown"):
        HiGRPOConfig.from_dict({"policy_path": "p", "bogus": 1})


def test_no_resume_starts_a_clean_run(tiny_policy, tmp_path):
    cfg = _config(tiny_policy, tmp_path, save_every=1)
    HiGRPOTrainer(cfg, rewards_global=_fraction(), rewards_local=_fraction()).train(steps=2)
    again = HiGRPOTrainer(cfg, rewards_global=_fraction(), rewards_local=_fraction())
    again.train(steps=1, resume=False)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000001"]


def test_bf16_checkpoint_trains_with_fp32_master_weights_by_default(tiny_policy, tmp_path):
    """A bf16 checkpoint at the paper's lr 1e-6: under the default (precision auto = bf16-mixed, fp32 master
    weights and AdamW states) nearly every weight moves; in pure bf16 the updates round away."""
    from transformers import AutoModelForCausalLM

    from rewardkit.rl.trainer import checkpoint_dtype

    bf16 = tmp_path / "bf16"
    shutil.copytree(tiny_policy, bf16)
    AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.bfloat16).save_pretrained(str(bf16))
    assert checkpoint_dtype(bf16) == "bfloat16"
    start = {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(str(bf16)).state_dict().items()}

    def changed_fraction(**kw) -> tuple[float, HiGRPOTrainer]:
        t = HiGRPOTrainer(_config(bf16, tmp_path / str(kw), lr=1e-6, mu=1, beta=0.0, **kw),
                          rewards_global=_fraction(), rewards_local=_fraction())
        t.train(steps=2)
        sd = t.unwrapped_model.state_dict()
        n = sum(v.numel() for v in start.values())
        return sum(int((sd[k].float() != v).sum()) for k, v in start.items()) / n, t

    mixed, t = changed_fraction()
    assert t.precision == "bf16-mixed" and next(t.model.parameters()).dtype == torch.float32
    assert isinstance(t.optimizer.state_dict()["state"][0]["exp_avg"], torch.Tensor)
    assert t.optimizer.state_dict()["state"][0]["exp_avg"].dtype == torch.float32
    pure, t = changed_fraction(precision="bf16-true")
    assert next(t.model.parameters()).dtype == torch.bfloat16
    assert mixed > 0.9, mixed
    assert pure < 0.1, pure


def test_lr_schedule_warmup_then_cosine_or_linear():
    from rewardkit.rl.trainer import lr_factor_fn

    cfg = HiGRPOConfig(lr_schedule="cosine", lr_warmup_steps=2, lr_min_ratio=0.1, steps=6)
    f = [lr_factor_fn(cfg)(s) for s in range(7)]
    assert f[:3] == [0.5, 1.0, 1.0]
    assert f[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4)))
    assert f[6] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[1:], f[2:]))
    lin = lr_factor_fn(HiGRPOConfig(lr_schedule="linear", steps=4))
    assert [lin(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor_fn(HiGRPOConfig())(100) == 1.0  # constant, no warmup: the paper's setting
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor_fn(HiGRPOConfig(lr_schedule="exp"))


def test_what_an_rl_engineer_watches(tiny_policy, tmp_path, monkeypatch):
    """Per step: lr (warmup), entropy and clip fraction per phase, grad norm, groups dropped; held-out
    prompts evaluated every ``eval_every`` steps into the same CSV; TensorBoard and W&B (offline) logs."""
    import csv

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _config(tiny_policy, tmp_path, prompts=["grow"], prompts_per_step=1, heldout_prompts=["fill"],
                  eval_every=2, heldout_group_size=3, lr_warmup_steps=2, steps=4,
                  loggers=["tensorboard", "wandb"])
    t = HiGRPOTrainer(cfg, rewards_global=_fraction(), rewards_local=_fraction())
    t.train(steps=4)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.015, 0.03, 0.03, 0.03])
    for key in ("global/entropy", "local/entropy", "global/clip_frac", "grad_norm", "groups_dropped", "global/occupied"):
        assert all(r[key] != "" for r in rows), key
    assert 0 < float(rows[0]["global/entropy"]) < np.log(t.policy.vocab.vocab_size)
    held = [r["heldout/global/reward"] for r in rows]
    assert held[0] == "" and held[2] == "" and held[1] != "" and held[3] != ""  # steps 2 and 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    ev.Reload()
    assert [e.step for e in ev.Scalars("global/reward")] == [1, 2, 3, 4]
    assert [e.step for e in ev.Scalars("heldout/global/reward")] == [2, 4]
    assert list((tmp_path / "logs").rglob("*.wandb")), "no offline W&B run written"
    with pytest.raises(ValueError, match="never be trained on"):
        HiGRPOTrainer(_config(tiny_policy, tmp_path / "bad", heldout_prompts=["fill"]),
                      rewards_global=_fraction(), rewards_local=_fraction())


def test_lora_reference_is_the_adapter_disabled_base_model(tiny_policy, tmp_path):
    """LoRA: no second copy of the weights; the KL reference is the base with adapters disabled (equal to the
    untouched checkpoint), base weights never change, the adapters do, and the exported policy is a plain
    Hugging Face checkpoint with the adapters merged. Resume loads the adapters."""
    from rewardkit.rl.policy import MeshPolicy, RolloutBatch

    cfg = _config(tiny_policy, tmp_path, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]},
                  lr=0.01, mu=2, save_every=2)
    t = HiGRPOTrainer(cfg, rewards_global=_fraction(), rewards_local=_fraction())
    assert t.ref_model is None and t.reference_mode == "adapter"
    trainable = [n for n, p in t.unwrapped_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    t.train(steps=2)
    base = MeshPolicy.from_pretrained(tiny_policy)
    groups = t.rollout(PROMPTS, 2, seed=3)
    b = RolloutBatch.collate([s for g in groups for s in g.steps["global"].sequences], t.policy.vocab.pad_id)
    [ref] = t.updater.ref_logprobs([b])
    with torch.no_grad():
        want = base.logprobs(base.model, b, t.cfg.sampling)
        now = t.policy.logprobs(t.model, b, t.cfg.sampling)
    assert torch.allclose(ref, want, atol=1e-5)
    assert not torch.allclose(now, want, atol=1e-4)  # the adapters trained
    # the export: adapters merged into a plain checkpoint that scores like the trained model
    exported = MeshPolicy.from_pretrained(tmp_path / "policy")
    with torch.no_grad():
        assert torch.allclose(exported.logprobs(exported.model, b, t.cfg.sampling), now, atol=1e-4)
    assert (tmp_path / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors").exists()
    # resume: a new trainer loads the adapters and continues from step 2
    t2 = HiGRPOTrainer(cfg, rewards_global=_fraction(), rewards_local=_fraction())
    assert t2.load_checkpoint() == 2
    with torch.no_grad():
        assert torch.allclose(t2.policy.logprobs(t2.model, b, t.cfg.sampling), now, atol=1e-5)
    with pytest.raises(ValueError, match="needs lora"):
        HiGRPOTrainer(_config(tiny_policy, tmp_path / "x", reference="adapter"), rewards_global=_fraction(),
                      rewards_local=_fraction())


def test_lora_adapters_stay_out_of_the_vision_tower(tmp_path):
    """Qwen2.5-VL's vision blocks also have gate/up/down projections: adapters go on the language model only."""
    from rewardkit.rl.lora import LoRAConfig, apply_lora
    from rewardkit.rl.policy import MeshPolicy

    build_tiny_policy(tmp_path / "q", ["a", "cube"], codebook_size=4, tokens_per_object=4, arch="qwen2_5_vl",
                      hidden_size=32, num_layers=1, num_heads=2)
    model = apply_lora(MeshPolicy.from_pretrained(tmp_path / "q").model, LoRAConfig(r=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("mlp.gate_proj.lora_A" in n for n in trainable)
    assert trainable and not any(".visual." in f".{n}" for n in trainable)


def test_reference_on_cpu_matches_the_reference_on_device(tiny_policy, tmp_path):
    a = HiGRPOTrainer(_config(tiny_policy, tmp_path / "a"), rewards_global=_fraction(), rewards_local=_fraction())
    c = HiGRPOTrainer(_config(tiny_policy, tmp_path / "c", reference="cpu"), rewards_global=_fraction(),
                      rewards_local=_fraction())
    assert next(c.ref_model.parameters()).device.type == "cpu"
    from rewardkit.rl.policy import RolloutBatch

    groups = a.rollout(PROMPTS, 2, seed=4)
    b = RolloutBatch.collate([s for g in groups for s in g.steps["local"].sequences], a.policy.vocab.pad_id)
    assert torch.allclose(a.updater.ref_logprobs([b])[0], c.updater.ref_logprobs([b])[0])


def test_activation_checkpointing_gives_the_same_gradients(tiny_policy, tmp_path):
    from rewardkit.rl.policy import MeshPolicy, RolloutBatch, SamplingConfig
    from rewardkit.rl.trainer import checkpoint_decoder_layers

    plain, ckpt = MeshPolicy.from_pretrained(tiny_policy), MeshPolicy.from_pretrained(tiny_policy)
    assert checkpoint_decoder_layers(ckpt.model) == 1  # one decoder layer in the tiny policy
    sampling = SamplingConfig(max_reasoning_tokens=2)
    steps = plain.rollout_step(plain.model, ["plan fill", "plan grow"], sampling, seed=0)
    # the wrapped model still generates (no grad) and computes the same log-probs and gradients
    assert len(ckpt.rollout_step(ckpt.model, ["plan fill"], sampling, seed=0)) == 1
    b = RolloutBatch.collate(steps, plain.vocab.pad_id)
    grads = []
    for p in (plain, ckpt):
        p.model.eval().zero_grad()
        lp = p.logprobs(p.model, b, sampling)
        lp.sum().backward()
        grads.append({n.replace("._checkpoint_wrapped_module", ""): q.grad.clone()
                      for n, q in p.model.named_parameters() if q.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    t = HiGRPOTrainer(_config(tiny_policy, tmp_path, activation_checkpointing=True), rewards_global=_fraction(),
                      rewards_local=_fraction())
    assert np.isfinite(t.train_step()["loss"])


@pytest.mark.slow
def test_fsdp_two_processes_sharded_checkpoint_resume_and_export(tmp_path):
    """strategy: fsdp (PyTorch FSDP2 through Fabric) on 2 CPU processes: parameters are sharded, a run
    resumed from its sharded checkpoint gives the same next-step loss as the uninterrupted run, the
    checkpoint also resumes on 1 device, and the exported policy is a consolidated HF checkpoint."""
    import subprocess
    import sys

    from rewardkit.rl.policy import MeshPolicy

    init = tmp_path / "init"
    build_tiny_policy(init, ["a", "cube", "ball", "cone", "plan", "detail"], codebook_size=256, tokens_per_object=8,
                      hidden_size=32, num_layers=2, num_heads=2, seed=0)

    def run(out: str, steps: int, devices: int = 2) -> list[dict]:
        cfg = {
            "policy_path": str(init), "tokens_per_object": 8,
            "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
            "prompts": ["a cube", "a ball", "a cone"], "sampling": {"max_reasoning_tokens": 3},
            "rewards_global": [{"builtin": "occupancy_iou"}], "rewards_local": [{"builtin": "surface_f1"}],
            "group_size": 4, "prompts_per_step": 1, "lr": 0.01, "mu": 2, "steps": steps, "save_every": 2,
            "output_dir": str(tmp_path / out), "eval_group_size": 0, "render": False, "dynamic_sampling": False,
            "accelerator": "cpu", "devices": devices, "strategy": "fsdp", "num_threads": 1,
            "activation_checkpointing": True,
        }
        path = tmp_path / f"{out}-{steps}-{devices}.json"
        path.write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-m", "rewardkit", "rl", "--config", str(path)], capture_output=True,
                              text=True, timeout=400, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    full = run("full", 3)
    assert [r["step"] for r in full] == [1, 2, 3]
    summary = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert 0.4 < summary["parameters_on_rank0"] < 0.6  # each of the 2 ranks holds about half
    ckpt = tmp_path / "full" / "checkpoints" / "step-000002" / "state"
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    run("resumed", 2)
    resumed = run("resumed", 3)  # the same output_dir: resumes from step 2's sharded checkpoint
    assert resumed[2]["loss"] == pytest.approx(full[2]["loss"], rel=1e-5, abs=1e-7)
    assert resumed[2]["global/reward"] == pytest.approx(full[2]["global/reward"])
    # the consolidated export loads as a plain Hugging Face checkpoint and differs from the start
    exported = MeshPolicy.from_pretrained(tmp_path / "full" / "policy").model.state_dict()
    start = MeshPolicy.from_pretrained(init).model.state_dict()
    assert exported.keys() == start.keys()
    assert all(exported[k].shape == start[k].shape for k in start)
    assert any(not torch.equal(exported[k], start[k]) for k in start)
    # the 2-rank sharded checkpoint resumes on one device (torch distributed checkpoint reshards)
    shutil.copytree(tmp_path / "full", tmp_path / "one")
    (tmp_path / "one" / "checkpoints" / "latest").write_text("step-000002")
    one = run("one", 3, devices=1)
    assert [r["step"] for r in one] == [1, 2, 3]


def test_overlapped_rewards_give_the_same_step(tiny_policy, tmp_path):
    """Step 1's rewards computed in the reward thread while step 2 generates: the same numbers as the
    sequential path, and every reward call runs in that one thread."""
    import threading

    seen = set()

    def frac_in_thread():
        f = occupied_fraction(2)

        def fn(meshes, prompts):
            seen.add(threading.current_thread().name)
            return f(meshes, prompts)

        return StepReward([RewardTerm("occupied", fn)])

    rows = []
    for overlap in (True, False):
        seen.clear()
        t = HiGRPOTrainer(_config(tiny_policy, tmp_path / str(overlap), overlap_rewards=overlap),
                          rewards_global=frac_in_thread(), rewards_local=frac_in_thread())
        rows.append(t.train_step())
        names = set(seen)
        if overlap:
            assert len(names) == 1 and next(iter(names)).startswith("rewardkit-rewards")
        else:
            assert names == {threading.current_thread().name}
    for key in ("global/reward", "local/reward", "loss", "global/kl"):
        assert rows[0][key] == pytest.approx(rows[1][key]), key
