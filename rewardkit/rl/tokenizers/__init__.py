"""3D shape tokenizers behind one interface (tokens -> occupancy grid -> mesh).

- :class:`VoxelBlockTokenizer`: lossless, no weights, small grids (tests and the CPU demo).
- :class:`VQVAETokenizer`: the ShapeLLM-Omni 3D VQVAE (8192 x 32 codebook, 1024 tokens <-> 64^3),
  weights from a user path.

``create_tokenizer(spec)`` builds either from a config mapping (``{"type": "voxel_blocks",
"resolution": 8, "block": 2}`` or ``{"type": "shapellm_vqvae", "weights": PATH, ...}``).
"""

from __future__ import annotations

from typing import Any

from rewardkit.rl.tokenizers.base import ShapeTokenizer, fit_codes, occupancy_to_mesh, voxelize_mesh
from rewardkit.rl.tokenizers.voxel_blocks import VoxelBlockTokenizer

__all__ = [
    "ShapeTokenizer", "VoxelBlockTokenizer", "VQVAETokenizer", "create_tokenizer", "fit_codes", "occupancy_to_mesh",
    "voxelize_mesh",
]


def __getattr__(name: str) -> Any:  # the VQVAE pulls in torch; import it on first use
    if name == "VQVAETokenizer":
        from rewardkit.rl.tokenizers.vqvae import VQVAETokenizer

        return VQVAETokenizer
    raise AttributeError(name)


def create_tokenizer(spec: dict[str, Any] | ShapeTokenizer) -> ShapeTokenizer:
    if isinstance(spec, ShapeTokenizer):
        return spec
    spec = dict(spec)
    kind = spec.pop("type", "voxel_blocks")
    if kind == "voxel_blocks":
        return VoxelBlockTokenizer(**spec)
    if kind in ("shapellm_vqvae", "vqvae"):
        from rewardkit.rl.tokenizers.vqvae import VQVAETokenizer

        weights = spec.pop("weights", None)
        if not weights:
            raise ValueError("tokenizer type shapellm_vqvae needs 'weights': a 3DVQVAE.bin/.safetensors path")
        return VQVAETokenizer.from_pretrained(
            weights, config=spec.pop("config", None), device=spec.pop("device", "cpu"), key_map=spec.pop("key_map", None)
        )
    raise ValueError(f"unknown tokenizer type {kind!r} (voxel_blocks | shapellm_vqvae)")
