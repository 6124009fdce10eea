"""Per-token log-probs without a [B, T, V] tensor (rewardkit.rl.policy.sequence_logprobs: the output layer
applied to the scored positions only, a chunk at a time under checkpointing): values, entropies and
gradients equal to the plain full-vocabulary log-softmax; no vocabulary-wide tensor larger than a chunk."""

import math
from typing import ClassVar

import pytest
import torch

from rewardkit.rl.policy import (
    PHASE_MESH,
    PHASE_TEXT,
    MeshPolicy,
    RolloutBatch,
    StepRollout,
    build_tiny_policy,
    forward_logits,
    sequence_logprobs,
)


def _plain(model, batch, temperature, allowed, reasoning_temperature):
    """The textbook computation: full [B, L, V] fp32 logits, per-phase temperature and masks, log_softmax."""
    lg = forward_logits(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    t = torch.where(batch.phases == PHASE_TEXT, reasoning_temperature, temperature).float()
    lg = lg / t[..., None]
    text_ok, mesh_ok = allowed
    neg = torch.finfo(lg.dtype).min
    lg = torch.where((batch.phases == PHASE_TEXT)[..., None] & ~text_ok, neg, lg)
    lg = torch.where((batch.phases == PHASE_MESH)[..., None] & ~mesh_ok, neg, lg)
    logp = torch.log_softmax(lg, -1)
    lp = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1) * batch.mask
    ent = -(logp.exp() * logp.clamp_min(neg)).sum(-1) * batch.mask
    return lp, ent


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "p"
    build_tiny_policy(path, ["a", "red", "cube", "ball"], 32, 6, arch="qwen2", hidden_size=64, num_heads=4,
                      num_kv_heads=2, vocab_size=300)  # rows past the tokenizer's ids, as in real checkpoints
    return MeshPolicy.from_pretrained(path)


def _batch(policy):
    v = policy.vocab
    g = torch.Generator().manual_seed(0)
    steps = []
    for i in range(3):
        ctx = torch.randint(3, 7, (4 + i,), generator=g).tolist()
        text = torch.randint(3, 7, (3 + 2 * i,), generator=g).tolist()
        codes = v.code_ids[torch.randint(0, 32, (6,), generator=g)].tolist()
        comp = text + [v.mesh_start] + codes + [v.mesh_end]
        steps.append(StepRollout(ctx, comp, [PHASE_TEXT] * (len(text) + 1) + [PHASE_MESH] * 6 + [3], "", None, 6))
    return RolloutBatch.collate(steps, v.pad_id)


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_logprobs_and_gradients_equal_the_plain_computation(policy, chunk):
    model = policy.model.float()
    b = _batch(policy)
    kw = dict(temperature=0.8, allowed=policy.vocab.allowed_masks(), reasoning_temperature=1.3)
    model.zero_grad(set_to_none=True)
    lp, ent = sequence_logprobs(model, b, return_entropy=True, chunk_tokens=chunk, **kw)
    (lp * torch.linspace(0.5, 2.0, lp.numel()).view_as(lp)).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    lp0, ent0 = _plain(model, b, **kw)
    (lp0 * torch.linspace(0.5, 2.0, lp0.numel()).view_as(lp0)).sum().backward()
    assert torch.allclose(lp, lp0, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ent, ent0, atol=1e-5, rtol=1e-5)
    assert (lp[b.mask == 0] == 0).all() and (lp[b.mask > 0] < 0).all()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6, rtol=1e-4), n
    # unconstrained, one temperature: the same against a plain log_softmax
    lp1 = sequence_logprobs(model, b, temperature=1.0, chunk_tokens=chunk)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    want = torch.log_softmax(logits, -1).gather(-1, b.input_ids[:, 1:, None]).squeeze(-1) * b.mask
    assert torch.allclose(lp1, want, atol=1e-5)


def test_no_tensor_wider_than_a_chunk_of_the_vocabulary(policy):
    """No op of the log-prob forward and backward outputs a vocabulary-wide tensor of more than one
    chunk's positions (the plain computation makes [B, L, V] logits and a [B, L, V] fp32 log-softmax)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = policy.model.float()
    b = _batch(policy)
    V, H = model.get_output_embeddings().weight.shape
    chunk = 4

    class Outputs(TorchDispatchMode):
        sizes: ClassVar[list] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                # [..., V] activations (not the [H, V] weight gradient of the output layer)
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == V and tuple(t.shape) != (H, V):
                    self.sizes.append(tuple(t.shape))
            return out

    with Outputs() as rec:
        lp = sequence_logprobs(model, b, allowed=policy.vocab.allowed_masks(), chunk_tokens=chunk)
        lp.sum().backward()
    assert rec.sizes, "the output layer was never seen"
    assert max(math.prod(s) for s in rec.sizes) <= chunk * V, sorted(set(rec.sizes))
    assert int(b.mask.sum()) > 3 * chunk  # several chunks ran
