"""3D shape tokenizers behind one interface (tokens -> occupancy grid -> mesh).

- :class:`VoxelBlockTokenizer`: lossless, no weights, small grids (tests and the CPU demo).
- :class:`VQVAETokenizer`: the ShapeLLM-Omni 3D VQVAE (8192 x 32 codebook, 1024 tokens <-> 64^3),
  weights from a user path.

``create_tokenizer(spec)`` builds either from a :class:`ShapeTokenizerConfig` (the ``shape_tokenizer``
section of a Hi-GRPO config: ``{type: voxel_blocks, resolution: 8, block: 2}`` or ``{type: shapellm_vqvae,
weights: PATH, ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rewardkit import config as _config
from rewardkit.rl.tokenizers.base import ShapeTokenizer, fit_codes, occupancy_to_mesh, voxelize_mesh
from rewardkit.rl.tokenizers.voxel_blocks import VoxelBlockTokenizer

__all__ = [
    "ShapeTokenizer", "ShapeTokenizerConfig", "VoxelBlockTokenizer", "VQVAETokenizer", "create_tokenizer", "fit_codes", "occupancy_to_mesh",
    "voxelize_mesh",
]


def __getattr__(name: str) -> Any:  # the VQVAE pulls in torch; import it on first use
    if name == "VQVAETokenizer":
        from rewardkit.rl.tokenizers.vqvae import VQVAETokenizer

        return VQVAETokenizer
    raise AttributeError(name)


@dataclass
class ShapeTokenizerConfig:
    """Which shape tokenizer turns mesh tokens into occupancy and meshes (a Hi-GRPO config's
    ``shape_tokenizer``). ``type`` picks it; each field below is for the type its comment names, and
    setting a field of the other type is an error."""

    type: Literal["voxel_blocks", "shapellm_vqvae"] = "voxel_blocks"
    resolution: int | None = None  # voxel_blocks: grid side (None: 8)
    block: int | None = None  # voxel_blocks: voxels per token side, 1-3 (None: 2)
    weights: str | None = None  # shapellm_vqvae (required): 3DVQVAE.bin / *.safetensors, or a folder with one
    config: dict[str, Any] | None = None  # shapellm_vqvae: VQVAEConfig fields (None: the weights' config.json)
    key_map: dict[str, str] | None = None  # shapellm_vqvae: renames of the weights' keys
    device: str | None = None  # shapellm_vqvae: where it decodes (None: the policy's device, else cpu)

    def __post_init__(self) -> None:
        other = ("weights", "config", "key_map", "device") if self.type == "voxel_blocks" else ("resolution", "block")
        wrong = [f for f in other if getattr(self, f) is not None]
        if wrong:
            raise ValueError(f"shape_tokenizer: {', '.join(wrong)} is not a setting of type {self.type}")
        if self.type == "shapellm_vqvae" and not self.weights:
            raise ValueError("shape_tokenizer: type shapellm_vqvae needs 'weights': a 3DVQVAE.bin/.safetensors path")


def create_tokenizer(spec: ShapeTokenizerConfig | Mapping[str, Any] | ShapeTokenizer,
                     default_device: str = "cpu") -> ShapeTokenizer:
    """The tokenizer of ``spec`` (a mapping is read by the config grammar). ``default_device``: where a
    VQVAE decodes when its config names no ``device``."""
    if isinstance(spec, ShapeTokenizer):
        return spec
    if not isinstance(spec, ShapeTokenizerConfig):
        spec = _config.from_dict(ShapeTokenizerConfig, spec, key="shape_tokenizer")
    if spec.type == "voxel_blocks":
        return VoxelBlockTokenizer(resolution=8 if spec.resolution is None else spec.resolution,
                                   block=2 if spec.block is None else spec.block)
    from rewardkit.rl.tokenizers.vqvae import VQVAETokenizer

    return VQVAETokenizer.from_pretrained(spec.weights, config=spec.config, device=spec.device or default_device,
                                          key_map=spec.key_map)
