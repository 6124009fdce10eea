"""The ShapeLLM-Omni 3D VQVAE: 1024 tokens (codebook 8192 x 32) <-> 64^3 occupancy.

Architecture (ShapeLLM-Omni paper, arXiv:2506.01853 §3.3; TRELLIS sparse-structure conv VAE):

- encoder: conv3d 1 -> 32 at 64^3, residual blocks with channel LayerNorm + SiLU, two stride-2
  downsamples (32 -> 128 -> 512 channels), a middle block, and an output layer giving 2 x 8 channels
  at 16^3 of which the first 8 (the mean) are used;
- the 16^3 x 8 latent is regrouped into 1024 vectors of 32 dims by concatenating every four
  neighbouring positions (along the last axis) channel-wise, and each vector is quantized against an
  8192 x 32 codebook;
- decoder: the mirror image with pixel-shuffle upsampling, giving 64^3 logits; occupied = logit > 0.

Weights are the user's (``3DVQVAE.bin`` as released by ShapeLLM-Omni is a plain PyTorch state dict;
``.safetensors`` and ``from_pretrained`` directories are accepted too). The parameter names follow
the layout published reimplementations load ``3DVQVAE.bin`` with (``Encoder.*``, ``Decoder.*``,
``vq.embeddings.weight``); ``key_map`` renames prefixes for checkpoints laid out differently, and a
mismatch fails loudly with the missing/unexpected keys rather than decoding garbage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rewardkit import config as _config
from rewardkit.rl.tokenizers.base import ShapeTokenizer

__all__ = ["VQVAEConfig", "ShapeVQVAE", "VQVAETokenizer", "load_state_dict_file"]


@dataclass
class VQVAEConfig:
    resolution: int = 64
    channels: tuple[int, ...] = (32, 128, 512)
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    codebook_size: int = 8192
    code_dim: int = 32
    # the encoder's output layer keeps TRELLIS' (mean, logvar) width; only the mean is quantized
    encoder_out_doubled: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        down = 2 ** (len(self.channels) - 1)
        if self.resolution % down:
            raise ValueError(f"resolution {self.resolution} not divisible by {down}")
        side = self.resolution // down
        if (side**3 * self.latent_channels) % self.code_dim or self.code_dim % self.latent_channels:
            raise ValueError("latent size must regroup into whole code vectors")

    @property
    def latent_side(self) -> int:
        return self.resolution // 2 ** (len(self.channels) - 1)

    @property
    def group(self) -> int:
        return self.code_dim // self.latent_channels

    @property
    def num_tokens(self) -> int:
        return self.latent_side**3 * self.latent_channels // self.code_dim


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``[B, C, D, H, W]`` tensor, computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.movedim(1, -1).float()).to(x.dtype)
        return y.movedim(-1, 1)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out = out_channels or channels
        self.norm1 = _ChannelLayerNorm(channels, elementwise_affine=True)
        self.conv1 = nn.Conv3d(channels, out, 3, padding=1)
        self.norm2 = _ChannelLayerNorm(out, elementwise_affine=True)
        self.conv2 = nn.Conv3d(out, out, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out, 1) if out != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pixel_shuffle_3d(x: torch.Tensor, scale: int) -> torch.Tensor:
    b, c, d, h, w = x.shape
    c2 = c // scale**3
    x = x.reshape(b, c2, scale, scale, scale, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c2, d * scale, h * scale, w * scale)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pixel_shuffle_3d(self.conv(x), 2)


class _Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch = list(cfg.channels)
        self.input_layer = nn.Conv3d(1, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            self.blocks.extend(_ResBlock(c) for _ in range(cfg.num_res_blocks))
            if i < len(ch) - 1:
                self.blocks.append(_Down(c, ch[i + 1]))
        self.middle_block = nn.Sequential(*[_ResBlock(ch[-1]) for _ in range(cfg.num_res_blocks_middle)])
        out_ch = cfg.latent_channels * (2 if cfg.encoder_out_doubled else 1)
        self.out_layer = nn.Sequential(_ChannelLayerNorm(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], out_ch, 3, padding=1))
        self.latent_channels = cfg.latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x)
        for block in self.blocks:
            h = block(h)
        h = self.out_layer(self.middle_block(h))
        return h[:, : self.latent_channels]


class _Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch = list(reversed(cfg.channels))
        self.input_layer = nn.Conv3d(cfg.latent_channels, ch[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[_ResBlock(ch[0]) for _ in range(cfg.num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            self.blocks.extend(_ResBlock(c) for _ in range(cfg.num_res_blocks))
            if i < len(ch) - 1:
                self.blocks.append(_Up(c, ch[i + 1]))
        self.out_layer = nn.Sequential(_ChannelLayerNorm(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.middle_block(self.input_layer(z))
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)


class _Quantizer(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.codebook_size, cfg.code_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, N, dim]`` -> nearest code ``[B, N]`` (squared L2)."""
        w = self.embeddings.weight
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.t() + w.pow(2).sum(-1))
        return d.argmin(-1)


class ShapeVQVAE(nn.Module):
    """The network; :class:`VQVAETokenizer` wraps it in the tokenizer interface."""

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = config or VQVAEConfig()
        self.Encoder = _Encoder(self.config)
        self.Decoder = _Decoder(self.config)
        self.vq = _Quantizer(self.config)

    def _regroup(self, z: torch.Tensor) -> torch.Tensor:  # [B, C, s, s, s] -> [B, N, dim]
        return z.permute(0, 2, 3, 4, 1).reshape(z.shape[0], self.config.num_tokens, self.config.code_dim)

    def _ungroup(self, q: torch.Tensor) -> torch.Tensor:  # [B, N, dim] -> [B, C, s, s, s]
        s, c = self.config.latent_side, self.config.latent_channels
        return q.reshape(q.shape[0], s, s, s, c).permute(0, 4, 1, 2, 3).contiguous()

    @torch.no_grad()
    def Encode(self, occupancy: torch.Tensor) -> torch.Tensor:  # ShapeLLM-Omni's name
        """``[B, 1, R, R, R]`` float occupancy -> ``[B, num_tokens]`` code indices."""
        return self.vq.indices(self._regroup(self.Encoder(occupancy)))

    @torch.no_grad()
    def Decode(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, num_tokens]`` code indices -> ``[B, 1, R, R, R]`` occupancy logits."""
        return self.Decoder(self._ungroup(self.vq.embeddings(indices)))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a PyTorch file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


class VQVAETokenizer(ShapeTokenizer):
    """ShapeLLM-Omni's 3D VQVAE behind the :class:`ShapeTokenizer` interface."""

    name = "shapellm_vqvae"

    def __init__(self, model: ShapeVQVAE, device: str | torch.device = "cpu", batch_size: int = 4):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        cfg = model.config
        self.resolution, self.num_tokens, self.codebook_size = cfg.resolution, cfg.num_tokens, cfg.codebook_size

    WEIGHT_NAMES = ("model.safetensors", "3DVQVAE.bin", "pytorch_model.bin", "model.pt")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: VQVAEConfig | dict | None = None,
        device: str | torch.device = "cpu",
        key_map: dict[str, str] | None = None,
    ) -> "VQVAETokenizer":
        """Load weights from a file (``3DVQVAE.bin``, ``*.safetensors``) or a directory holding one of
        :attr:`WEIGHT_NAMES` and optionally ``config.json`` (a :class:`VQVAEConfig` as JSON)."""
        path = Path(path)
        if path.is_dir():
            if config is None and (path / "config.json").exists():
                saved = json.loads((path / "config.json").read_text())
                config = saved.get("vqvae", saved)
            found = [path / n for n in cls.WEIGHT_NAMES if (path / n).exists()]
            if not found:
                raise FileNotFoundError(f"{path}: none of {cls.WEIGHT_NAMES}")
            path = found[0]
        if not path.exists():
            raise FileNotFoundError(path)
        if isinstance(config, dict):
            config = _config.from_dict(VQVAEConfig, config, key="vqvae")  # unknown keys, wrong types: ConfigError
        model = ShapeVQVAE(config)
        state = load_state_dict_file(path)
        for old, new in (key_map or {}).items():
            state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match the ShapeLLM-Omni VQVAE layout ({model.config}); "
                f"missing {len(missing)} keys (e.g. {missing[:5]}), unexpected {len(unexpected)} "
                f"(e.g. {unexpected[:5]}). Pass key_map to rename prefixes."
            )
        return cls(model, device=device)

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.model.config)
        (directory / "config.json").write_text(json.dumps({"architecture": self.name, "vqvae": cfg}, indent=2))
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / "model.safetensors"))
        return directory

    def encode(self, occupancy: np.ndarray) -> np.ndarray:
        occ = np.asarray(occupancy, dtype=np.float32)
        single = occ.ndim == 3
        occ = occ[None] if single else occ
        out = []
        for i in range(0, len(occ), self.batch_size):
            x = torch.from_numpy(occ[i : i + self.batch_size]).unsqueeze(1).to(self.device)
            out.append(self.model.Encode(x).cpu().numpy())
        codes = np.concatenate(out).astype(np.int64)
        return codes[0] if single else codes

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = self._check_tokens(tokens)
        single = t.ndim == 1
        t = t[None] if single else t
        out = []
        for i in range(0, len(t), self.batch_size):
            logits = self.model.Decode(torch.from_numpy(t[i : i + self.batch_size]).to(self.device))
            out.append((logits[:, 0] > 0).cpu().numpy())
        occ = np.concatenate(out)
        return occ[0] if single else occ
