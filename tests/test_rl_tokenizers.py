"""Shape tokenizers: tokens <-> occupancy -> mesh (voxel blocks, ShapeLLM-Omni VQVAE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from rewardkit.demo.shapes import DEMO_SHAPES
from rewardkit.rl.tokenizers import ShapeTokenizer, VoxelBlockTokenizer, create_tokenizer, occupancy_to_mesh, voxelize_mesh
from rewardkit.rl.tokenizers.vqvae import ShapeVQVAE, VQVAEConfig, VQVAETokenizer


@pytest.mark.parametrize("resolution,block", [(8, 2), (4, 1), (16, 2), (6, 3)])
def test_voxel_blocks_are_lossless(resolution, block):
    tok = VoxelBlockTokenizer(resolution, block)
    assert tok.num_tokens == (resolution // block) ** 3 and tok.codebook_size == 2 ** (block**3)
    rng = np.random.default_rng(0)
    occ = rng.random((5, resolution, resolution, resolution)) > 0.5
    codes = tok.encode(occ)
    assert codes.shape == (5, tok.num_tokens) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < tok.codebook_size
    assert np.array_equal(tok.decode(codes), occ)
    assert np.array_equal(tok.decode(tok.encode(occ[0])), occ[0])  # unbatched
    assert np.array_equal(tok.encode(tok.decode(codes)), codes)


def test_voxel_block_code_layout():
    tok = VoxelBlockTokenizer(4, 2)
    occ = np.zeros((4, 4, 4), bool)
    occ[0, 0, 0] = True  # first voxel of the first block -> bit 0
    occ[3, 3, 3] = True  # last voxel of the last block -> bit 7
    codes = tok.encode(occ)
    assert codes.tolist() == [1, 0, 0, 0, 0, 0, 0, 128]


def test_invalid_codes_and_lengths_raise():
    tok = VoxelBlockTokenizer(8, 2)
    with pytest.raises(ValueError):
        tok.decode(np.zeros(63, np.int64))
    with pytest.raises(ValueError):
        tok.decode(np.full(64, 256))


def test_shapellm_parse_rule_pads_with_last_and_truncates():
    tok = VoxelBlockTokenizer(4, 2)  # 8 tokens
    assert tok.fit_length([3, 5]).tolist() == [3, 5, 5, 5, 5, 5, 5, 5]
    assert tok.fit_length(list(range(12))).tolist() == list(range(8))
    assert tok.fit_length([]).tolist() == [0] * 8


def test_occupancy_to_mesh_surface():
    occ = np.zeros((8, 8, 8), bool)
    occ[2:6, 2:6, 2:6] = True
    mesh = occupancy_to_mesh(occ)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(64 / 8**3)  # 64 voxels of (1/8)^3
    assert np.allclose(mesh.bounds, [[-0.25] * 3, [0.25] * 3])
    assert np.array_equal(mesh.metadata["occupancy"], occ)
    assert occupancy_to_mesh(np.zeros((8, 8, 8), bool)) is None
    tok = VoxelBlockTokenizer(8, 2)
    assert np.array_equal(tok.voxelize(tok.tokens_to_mesh(tok.encode(occ))), occ)  # uses the kept grid


def test_voxelize_normalizes_external_meshes():
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))  # normalized to x in [-0.5, 0.5], y/z in [-0.25, 0.25]
    occ = voxelize_mesh(box, 8)
    assert occ[:, 3:5, 3:5].all() and not occ[:, 0, :].any()
    assert 8 * 4 * 4 <= occ.sum() <= 8 * 6 * 6  # faces lying on voxel boundaries may take the next voxel too


@pytest.mark.parametrize("name", sorted(DEMO_SHAPES))
def test_demo_shapes_round_trip(name):
    tok = VoxelBlockTokenizer(8, 2)
    occ = DEMO_SHAPES[name].occupancy(8)
    assert occ.any() and not occ.all()
    assert np.array_equal(tok.decode(tok.encode(occ)), occ)


# -- ShapeLLM-Omni VQVAE ----------------------------------------------------------------------------

def test_full_size_vqvae_layout_matches_shapellm_omni():
    with torch.device("meta"):
        model = ShapeVQVAE()
    cfg = model.config
    assert (cfg.resolution, cfg.codebook_size, cfg.code_dim, cfg.num_tokens) == (64, 8192, 32, 1024)
    sd = model.state_dict()
    assert sd["vq.embeddings.weight"].shape == (8192, 32)
    assert sd["Encoder.input_layer.weight"].shape == (32, 1, 3, 3, 3)
    assert sd["Encoder.out_layer.2.weight"].shape == (16, 512, 3, 3, 3)  # TRELLIS (mean, logvar) width
    assert sd["Decoder.input_layer.weight"].shape == (512, 8, 3, 3, 3)
    assert sd["Decoder.out_layer.2.weight"].shape == (1, 32, 3, 3, 3)
    assert sd["Encoder.blocks.2.conv.weight"].shape == (128, 32, 2, 2, 2)  # stride-2 downsample
    assert sd["Decoder.blocks.2.conv.weight"].shape == (128 * 8, 512, 3, 3, 3)  # pixel-shuffle upsample


SMALL = VQVAEConfig(resolution=16, channels=(8, 16, 32), codebook_size=64, code_dim=32, latent_channels=8)


@pytest.fixture()
def random_vqvae(tmp_path):
    torch.manual_seed(0)
    model = ShapeVQVAE(SMALL)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "dir"])
def test_vqvae_loads_random_weights_in_the_released_formats(random_vqvae, tmp_path, fmt):
    sd = random_vqvae.state_dict()
    if fmt == "bin":  # 3DVQVAE.bin is a plain torch state dict
        path = tmp_path / "3DVQVAE.bin"
        torch.save(sd, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "vqvae.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = VQVAETokenizer(random_vqvae).save_pretrained(tmp_path / "vq")
    tok = VQVAETokenizer.from_pretrained(path, config=None if fmt == "dir" else SMALL)
    assert isinstance(tok, ShapeTokenizer)
    for k, v in tok.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert (tok.resolution, tok.num_tokens, tok.codebook_size) == (16, 16, 64)

    occ = DEMO_SHAPES["table"].occupancy(16)
    codes = tok.encode(occ)
    assert codes.shape == (16,) and 0 <= codes.min() and codes.max() < 64
    dec = tok.decode(codes)
    assert dec.shape == (16, 16, 16) and dec.dtype == bool
    # the tokens -> grid path is the model's: Decode logits > 0
    logits = random_vqvae.Decode(torch.from_numpy(codes)[None])
    assert np.array_equal(dec, (logits[0, 0] > 0).numpy())
    # batched == one by one
    batch = tok.encode(np.stack([occ, DEMO_SHAPES["cube"].occupancy(16)]))
    assert np.array_equal(batch[0], codes)
    mesh = tok.tokens_to_mesh(codes)
    assert mesh is None or mesh.metadata["tokenizer"] == "shapellm_vqvae"


def test_vqvae_wrong_layout_fails_loudly_and_key_map_fixes_it(random_vqvae, tmp_path):
    path = tmp_path / "renamed.bin"
    torch.save({k.replace("vq.embeddings", "quantizer.codebook"): v for k, v in random_vqvae.state_dict().items()}, path)
    with pytest.raises(ValueError, match="missing 1 keys"):
        VQVAETokenizer.from_pretrained(path, config=SMALL)
    tok = VQVAETokenizer.from_pretrained(path, config=SMALL, key_map={"quantizer.codebook": "vq.embeddings"})
    assert torch.equal(tok.model.vq.embeddings.weight, random_vqvae.vq.embeddings.weight)
    with pytest.raises(FileNotFoundError):
        VQVAETokenizer.from_pretrained(tmp_path / "nope.bin")


def test_create_tokenizer_from_config(random_vqvae, tmp_path):
    assert isinstance(create_tokenizer({"type": "voxel_blocks", "resolution": 4, "block": 1}), VoxelBlockTokenizer)
    torch.save(random_vqvae.state_dict(), tmp_path / "3DVQVAE.bin")
    tok = create_tokenizer({"type": "shapellm_vqvae", "weights": str(tmp_path / "3DVQVAE.bin"), "config": SMALL.__dict__})
    assert tok.num_tokens == 16
    with pytest.raises(ValueError):
        create_tokenizer({"type": "shapellm_vqvae"})
    with pytest.raises(ValueError):
        create_tokenizer({"type": "nope"})


def test_trainer_runs_on_a_hf_checkpoint_and_vqvae_weights_paths(random_vqvae, tmp_path):
    """The trainer takes a Hugging Face checkpoint path and a VQVAE weights path, nothing else."""
    from rewardkit.rl.policy import build_tiny_policy
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.save(random_vqvae.state_dict(), tmp_path / "3DVQVAE.bin")
    build_tiny_policy(tmp_path / "hf", ["a", "table", "plan"], codebook_size=64, tokens_per_object=16,
                      hidden_size=32, num_layers=1, num_heads=2)
    cfg = HiGRPOConfig.from_dict(dict(
        policy_path=str(tmp_path / "hf"), tokens_per_object=16,
        shape_tokenizer={"type": "shapellm_vqvae", "weights": str(tmp_path / "3DVQVAE.bin"), "config": SMALL.__dict__},
        prompts=["a small table"], sampling={"max_reasoning_tokens": 2}, group_size=3, prompts_per_step=1,
        rewards_global=[{"builtin": "occupied_fraction"}], rewards_local=[{"builtin": "mirror_symmetry"}],
        dynamic_sampling=False, output_dir=str(tmp_path / "run"), save_every=0, eval_group_size=0,
        accelerator="cpu", num_threads=1, lr=1e-3,
    ))
    trainer = HiGRPOTrainer(cfg)
    assert isinstance(trainer.shape_tokenizer, VQVAETokenizer) and trainer.shape_tokenizer.resolution == 16
    m = trainer.train_step()
    assert m["step"] == 1 and "global/occupied_fraction" in m and "local/mirror_symmetry_group_std" in m
