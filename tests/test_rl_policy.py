"""The Hugging Face mesh-token policy adapter: vocabulary, two-phase sampling, masks, log-probs."""

from __future__ import annotations

import pytest
import torch

from rewardkit.rl.policy import (
    PHASE_FORCED,
    PHASE_MESH,
    PHASE_TEXT,
    MeshPolicy,
    MeshVocab,
    RolloutBatch,
    SamplingConfig,
    StepRollout,
    build_tiny_policy,
)

torch.set_num_threads(1)
WORDS = ["a", "cube", "ball", "plan", "round", "flat", "detail"]


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2_5_vl"])
def policy(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "p"
    build_tiny_policy(path, WORDS, codebook_size=16, tokens_per_object=6, arch=request.param, hidden_size=32,
                      num_layers=1, num_heads=2)
    return MeshPolicy.from_pretrained(path)  # a local Hugging Face checkpoint directory


def test_vocab_follows_the_shapellm_convention(policy):
    tok, v = policy.tokenizer, policy.vocab
    assert v.codebook_size == 16 and policy.tokens_per_object == 6
    assert tok.convert_ids_to_tokens(v.mesh_start) == "<mesh-start>"
    assert tok.convert_ids_to_tokens(v.mesh_end) == "<mesh-end>"
    assert v.mesh_end == max(tok.get_vocab().values())  # <mesh-end> is the last token, as in ShapeLLM-Omni
    assert tok.convert_ids_to_tokens(int(v.code_ids[7])) == "<mesh7>"
    # "<mesh3>" in text is one token
    assert tok("a <mesh3> cube", add_special_tokens=False)["input_ids"][1] == int(v.code_ids[3])
    text, mesh = v.allowed_masks()
    assert not text[v.code_ids].any() and text[v.mesh_start] and not text[v.mesh_end]
    assert mesh[v.code_ids].all() and mesh[v.mesh_end] and not mesh[v.mesh_start]
    assert policy.mesh_sequence([1, 2]) == [v.mesh_start, int(v.code_ids[1]), int(v.code_ids[2]), v.mesh_end]


def test_vocab_without_mesh_tokens_is_rejected(policy):
    class Bare:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    with pytest.raises(ValueError, match="mesh tokens"):
        MeshVocab.from_tokenizer(Bare())
    with pytest.raises(ValueError, match="lacks"):
        MeshVocab.from_tokenizer(policy.tokenizer, codebook_size=17)


def test_two_phase_rollout_structure_and_masks(policy):
    s = SamplingConfig(max_reasoning_tokens=4)
    steps = policy.rollout_step(policy.model, ["plan a cube", "plan a round ball"] * 3, s, seed=3)
    v = policy.vocab
    for st in steps:
        ms = st.completion_ids.index(v.mesh_start)
        assert all(p == PHASE_TEXT for p in st.phases[:ms])  # reasoning tokens are actions
        assert st.phases[ms] in (PHASE_TEXT, PHASE_FORCED)  # <mesh-start>: sampled or forced
        mesh = st.completion_ids[ms + 1:]
        assert len(mesh) == 7 and mesh[-1] == v.mesh_end  # exactly 6 codes, then <mesh-end>
        assert st.phases[ms + 1:] == [PHASE_MESH] * 6 + [PHASE_FORCED]  # the length rule forced the end
        assert set(mesh[:-1]) <= set(v.code_ids.tolist())
        assert st.codes.shape == (6,) and st.num_codes_emitted == 6
        assert st.action_mask == [0 if p == PHASE_FORCED else 1 for p in st.phases]
        assert len(st.completion_ids) <= 4 + 1 + 7
    b = RolloutBatch.collate(steps, v.pad_id)
    lens = [len(st.context_ids) + len(st.completion_ids) for st in steps]
    for i, n in enumerate(lens):  # padding after the end is masked out
        assert b.mask[i, n - 1:].sum() == 0 and b.attention_mask[i, n:].sum() == 0
        assert b.mask[i].sum() == sum(steps[i].action_mask)


def test_reasoning_can_be_disabled_and_mesh_length_relaxed(policy):
    steps = policy.rollout_step(policy.model, ["a cube"] * 4, SamplingConfig(max_reasoning_tokens=0, force_mesh_length=False), seed=0)
    for st in steps:
        assert st.completion_ids[0] == policy.vocab.mesh_start and st.phases[0] == PHASE_FORCED
        assert st.reasoning_text == ""
        assert st.phases[-1] == PHASE_MESH  # a sampled <mesh-end> (or the length limit) is an action
        n = st.num_codes_emitted
        assert 0 <= n <= 7 and st.codes.shape == (6,)  # at most M + 1 tokens are sampled
        if 0 < n < 6:  # ShapeLLM-Omni's parse rule: pad with the last code (and truncate beyond M)
            assert (st.codes[n:] == st.codes[n - 1]).all()


def test_sampling_is_seeded(policy):
    s = SamplingConfig(max_reasoning_tokens=3)
    a = policy.rollout_step(policy.model, ["a ball"] * 3, s, seed=11)
    b = policy.rollout_step(policy.model, ["a ball"] * 3, s, seed=11)
    assert [x.completion_ids for x in a] == [x.completion_ids for x in b]


def test_logprobs_match_the_sampling_distribution(policy):
    """Log-probs of the training forward (right padding) equal generate's (left padding, KV cache)."""
    m, v = policy.model, policy.vocab
    ctx = [policy.encode_context("plan a cube a round ball"), policy.encode_context("a")]
    L = max(map(len, ctx))
    ids = torch.tensor([[v.pad_id] * (L - len(c)) + c for c in ctx])
    att = torch.tensor([[0] * (L - len(c)) + [1] * len(c) for c in ctx])
    torch.manual_seed(0)
    out = m.generate(input_ids=ids, attention_mask=att, do_sample=True, max_new_tokens=5, min_new_tokens=5,
                     output_logits=True, return_dict_in_generate=True, pad_token_id=v.pad_id, temperature=0.7,
                     eos_token_id=[])
    new = out.sequences[:, L:]
    gen_lp = torch.stack([torch.log_softmax(lg / 0.7, -1) for lg in out.logits], 1).gather(-1, new[..., None])[..., 0]
    steps = [StepRollout(c, new[i].tolist(), [PHASE_MESH] * 5, "", None, 0) for i, c in enumerate(ctx)]
    b = RolloutBatch.collate(steps, v.pad_id)
    lp = policy.logprobs(m, b, SamplingConfig(temperature=0.7, constrain_logprobs=False))
    mine = torch.stack([lp[i][b.mask[i] > 0] for i in range(2)])
    assert torch.allclose(mine, gen_lp, atol=1e-5)


def test_constrained_logprobs_normalize_over_allowed_tokens(policy):
    st = policy.rollout_step(policy.model, ["a cube"], SamplingConfig(max_reasoning_tokens=2), seed=1)[0]
    b = RolloutBatch.collate([st], policy.vocab.pad_id)
    with torch.no_grad():
        con = policy.logprobs(policy.model, b, SamplingConfig())
        free = policy.logprobs(policy.model, b, SamplingConfig(constrain_logprobs=False))
    act = b.mask[0] > 0
    assert (con[0][act] >= free[0][act] - 1e-6).all()  # renormalizing over fewer tokens raises log-probs
    assert (con[0][act] <= 0).all()


@pytest.mark.parametrize("force", [True, False])
def test_mesh_phase_logprobs_are_normalized_as_the_codes_were_sampled(policy, force):
    """force_mesh_length samples every code with <mesh-end> blocked: the loss's log-prob of a code is then the
    log-softmax over the codes alone (by hand from the model's full logits); without it, over the codes and
    <mesh-end>."""
    s = SamplingConfig(max_reasoning_tokens=2, force_mesh_length=force)
    st = policy.rollout_step(policy.model, ["a cube"], s, seed=3)[0]
    b = RolloutBatch.collate([st], policy.vocab.pad_id)
    with torch.no_grad():
        lp = policy.logprobs(policy.model, b, s)[0]
        logits = policy.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[0, :-1].float()
    v = policy.vocab
    allowed = v.code_ids.tolist() + ([] if force else [v.mesh_end])
    mesh = (b.phases[0] == PHASE_MESH) & (b.mask[0] > 0)
    assert int(mesh.sum()) > 0
    sub = logits[mesh][:, allowed]
    target = b.input_ids[0, 1:][mesh]
    col = torch.tensor([allowed.index(int(t)) for t in target])
    by_hand = torch.log_softmax(sub, -1).gather(-1, col[:, None])[:, 0]
    assert torch.allclose(lp[mesh], by_hand, atol=1e-5)


def test_checkpoint_generation_defaults_do_not_leak_into_sampling(policy):
    """A checkpoint's generation_config (here top_k=1, i.e. greedy) must not override the config's sampling."""
    gc = policy.model.generation_config
    old = (gc.top_k, gc.repetition_penalty)
    gc.top_k, gc.repetition_penalty = 1, 5.0
    try:
        steps = policy.rollout_step(policy.model, ["a cube"] * 8, SamplingConfig(max_reasoning_tokens=0), seed=5)
    finally:
        gc.top_k, gc.repetition_penalty = old
    assert len({tuple(s.codes.tolist()) for s in steps}) > 1


def _processors_run(policy, seed: int) -> list[str]:
    """Class names of the logits processors Hugging Face's generate ran in a rollout (both phases)."""
    model, seen = policy.model, []
    inner = model._get_logits_processor

    def record(*a, **k):
        procs = inner(*a, **k)
        seen.extend(type(p).__name__ for p in procs)
        return procs

    model._get_logits_processor = record
    try:
        policy.rollout_step(model, ["a cube"] * 2, SamplingConfig(max_reasoning_tokens=2), seed=seed)
    finally:
        del model._get_logits_processor
    return seen


def test_neutral_sampling_knobs_add_no_per_token_warpers(policy):
    """With temperature 1, top_p 1, top_k 0 the only per-token logits work is the mesh constraint: a neutral
    knob must not add a warper (min_p=0.0 added a softmax over the vocabulary per token)."""
    run = _processors_run(policy, 1)
    assert "_Restrict" in run
    assert not [p for p in run if p.endswith("Warper")], run


def test_checkpoint_min_p_does_not_leak_into_sampling(policy):
    """A checkpoint's min_p (0.99: nearly greedy) is overridden to off, not inherited."""
    gc = policy.model.generation_config
    old = gc.min_p
    gc.min_p = 0.99
    try:
        steps = policy.rollout_step(policy.model, ["a cube"] * 8, SamplingConfig(max_reasoning_tokens=0), seed=5)
        assert "MinPLogitsWarper" in _processors_run(policy, 1)  # present, but neutral (min_p=0.0)
    finally:
        gc.min_p = old
    assert len({tuple(s.codes.tolist()) for s in steps}) > 1


def test_reasoning_tokens_are_scored_at_the_reasoning_temperature(policy):
    """Text-phase positions were sampled at ``reasoning_temperature``: their log-probs (ratio, KL) must use
    it, while mesh positions keep ``temperature``."""
    s = SamplingConfig(temperature=1.0, reasoning_temperature=2.5, max_reasoning_tokens=3, constrain_logprobs=False)
    st = policy.rollout_step(policy.model, ["plan a cube"] * 2, s, seed=2)
    b = RolloutBatch.collate(st, policy.vocab.pad_id)
    with torch.no_grad():
        lp = policy.logprobs(policy.model, b, s)
        logits = policy.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    targets = b.input_ids[:, 1:, None]
    hot = torch.log_softmax(logits / 2.5, -1).gather(-1, targets)[..., 0]
    cold = torch.log_softmax(logits / 1.0, -1).gather(-1, targets)[..., 0]
    text = (b.phases == PHASE_TEXT) & (b.mask > 0)
    mesh = (b.phases == PHASE_MESH) & (b.mask > 0)
    assert text.any() and mesh.any()
    assert torch.allclose(lp[text], hot[text], atol=1e-5)
    assert torch.allclose(lp[mesh], cold[mesh], atol=1e-5)
    assert not torch.allclose(lp[text], cold[text], atol=1e-3)


def test_reasoning_budget_defaults_to_the_released_recipe():
    assert SamplingConfig().max_reasoning_tokens == 2048  # AR3D-R1: max_completion_length 2048
