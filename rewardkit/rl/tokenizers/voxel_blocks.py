"""A lossless, weight-free shape tokenizer: one code per b x b x b block of voxels.

Each block's ``b**3`` occupancy bits form the code (bit ``n`` = voxel ``n`` of the block in C order),
so the codebook has ``2**(b**3)`` entries (256 for b = 2) and an object has ``(R / b)**3`` tokens in
x-major raster order ("grid by grid"). Encode and decode are exact inverses, which makes it the
tokenizer for tests and the CPU demo: a policy's tokens decode to exactly the shape it meant.
"""

from __future__ import annotations

import numpy as np

from rewardkit.rl.tokenizers.base import ShapeTokenizer

__all__ = ["VoxelBlockTokenizer"]


class VoxelBlockTokenizer(ShapeTokenizer):
    name = "voxel_blocks"

    def __init__(self, resolution: int = 8, block: int = 2):
        if block < 1 or block > 3:
            raise ValueError("block must be 1, 2 or 3 (codebook 2, 256 or 2**27)")
        if resolution % block:
            raise ValueError(f"resolution {resolution} is not a multiple of block {block}")
        self.resolution = int(resolution)
        self.block = int(block)
        self.blocks_per_side = self.resolution // self.block
        self.num_tokens = self.blocks_per_side**3
        self.codebook_size = 2 ** (self.block**3)
        self._weights = (1 << np.arange(self.block**3, dtype=np.int64))

    def __repr__(self) -> str:
        return f"VoxelBlockTokenizer(resolution={self.resolution}, block={self.block})"

    def encode(self, occupancy: np.ndarray) -> np.ndarray:
        occ = np.asarray(occupancy, dtype=bool)
        single = occ.ndim == 3
        if single:
            occ = occ[None]
        R, b, n = self.resolution, self.block, self.blocks_per_side
        if occ.shape[1:] != (R, R, R):
            raise ValueError(f"expected occupancy [{R},{R},{R}], got {occ.shape[1:]}")
        blocks = occ.reshape(-1, n, b, n, b, n, b).transpose(0, 1, 3, 5, 2, 4, 6).reshape(-1, n**3, b**3)
        codes = (blocks.astype(np.int64) * self._weights).sum(-1)
        return codes[0] if single else codes

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = self._check_tokens(tokens)
        single = t.ndim == 1
        if single:
            t = t[None]
        b, n = self.block, self.blocks_per_side
        bits = (t[..., None] & self._weights) > 0  # [B, n^3, b^3]
        occ = bits.reshape(-1, n, n, n, b, b, b).transpose(0, 1, 4, 2, 5, 3, 6).reshape(-1, *(self.resolution,) * 3)
        return occ[0] if single else occ
