"""The reward adapters under the real clients: TRL 1.16's GRPOTrainer (its reward call and completions
table) and verl 0.9.1's own reward managers on a real DataProto (issue 15, item 4 (a)-(e))."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.scoring import colored_box, mesh_files, scorer_set_dir

trl = pytest.importorskip("trl")


def _obj_text(mesh) -> str:
    return "\n".join([f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in mesh.vertices]
                     + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces])


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    from rewardkit.rl.policy import build_tiny_policy

    d = tmp_path_factory.mktemp("tiny-policy") / "policy"
    build_tiny_policy(d, ["a", "red", "box", "cone", "mesh", "v", "f"], codebook_size=8, tokens_per_object=4,
                      arch="llama", hidden_size=32, num_layers=1, num_heads=2, max_positions=256, seed=0)
    return d


def _trainer(policy_dir: Path, out: Path, reward, rows: list[dict], steps: int = 1):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    args = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
                      disable_tqdm=True, dataloader_num_workers=0, seed=0, shuffle_dataset=False, log_completions=False,
                      learning_rate=1e-6)
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=tok)


def test_trl_table_never_shows_a_previous_steps_scores(policy_dir, tmp_path):
    """(b): step 1 scores, step 2's meshes all fail; TRL's completions table (``_logs``) must hold step 2's
    None, not step 1's scores next to step 2's prompts."""
    from rewardkit.scoring.adapters import trl_reward_function

    files = mesh_files()
    reward = trl_reward_function(str(scorer_set_dir()), stage="global", mesh_key="mesh_path", device="cpu")
    rows = [{"prompt": "a red box", "mesh_path": str(files["red_box"])},
            {"prompt": "a cone", "mesh_path": str(files["broken"])}]
    trainer = _trainer(policy_dir, tmp_path, reward, rows, steps=2)
    trainer.train()
    logs = trainer._logs
    assert list(logs["prompt"]) == ["a cone", "a cone"]  # the table holds the latest step
    assert list(logs["extra"]["rewardkit/global"]) == [None, None]
    assert all(np.isnan(x) for x in logs["rewards"]["rewardkit_global"])


@pytest.fixture(scope="module")
def trl_trainer(policy_dir, tmp_path_factory):
    from rewardkit.scoring.adapters import trl_reward_function

    reward = trl_reward_function(str(scorer_set_dir()), stage="global", device="cpu")
    return _trainer(policy_dir, tmp_path_factory.mktemp("trl"), reward, [{"prompt": "a box"}])


def _trl_rewards(trainer, prompts, completions) -> tuple[list[float], dict]:
    """TRL's own reward call (``GRPOTrainer._calculate_rewards``: kwargs, log_extra, None -> NaN)."""
    trainer._pending_extra_logs.clear()
    inputs = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    out = trainer._calculate_rewards(inputs, prompts, completions, [[0]] * len(prompts))
    return out[:, 0].tolist(), dict(trainer._pending_extra_logs)


def _box_case():
    from rewardkit.scoring import load_scorer, score_meshes

    box = colored_box((128, 128, 128))
    expected = score_meshes([box], "a box", load_scorer(scorer_set_dir(), device="cpu"))[0].scores["global"]
    return box, _obj_text(box), expected


PROMPT = [{"role": "user", "content": "a box"}]


def test_trl_content_parts_messages_are_scored(trl_trainer):
    """(d): ``[{"type": "text", "text": ...}]`` content is read like plain string content."""
    _, text, expected = _box_case()
    completions = [[{"role": "assistant", "content": [{"type": "text", "text": text}]}],
                   [{"role": "assistant", "content": text}]]
    rewards, _ = _trl_rewards(trl_trainer, [PROMPT] * 2, completions)
    assert rewards == pytest.approx([expected, expected], abs=1e-4)


def test_trl_a_completion_naming_a_mesh_file_is_not_read_unless_opted_in(trl_trainer, tmp_path, monkeypatch):
    """(c): a policy must not be rewarded for writing ``cube.obj``; ``read_paths=True`` opts in."""
    box, _, expected = _box_case()
    box.export(tmp_path / "cube.obj")
    completion = [[{"role": "assistant", "content": str(tmp_path / "cube.obj")}]]  # an existing mesh file
    rewards, _ = _trl_rewards(trl_trainer, [PROMPT], completion)
    assert np.isnan(rewards[0])
    reward = trl_trainer.reward_funcs[0]
    monkeypatch.setattr(reward, "read_paths", True)
    rewards, _ = _trl_rewards(trl_trainer, [PROMPT], completion)
    assert rewards[0] == pytest.approx(expected, abs=1e-3)


def test_trl_stage_global_runs_only_the_global_scorer(trl_trainer):
    """(e): ``stage="global"`` on a scorer set loads, renders for and runs the global scorer only."""
    _, text, _ = _box_case()
    _, extra = _trl_rewards(trl_trainer, [PROMPT], [[{"role": "assistant", "content": text}]])
    assert set(extra) == {"rewardkit/global"}
    assert trl_trainer.reward_funcs[0].backend.scorers.names() == ["global"]


# ---------------------------------------------------------------------------------------------------- #
# verl
# ---------------------------------------------------------------------------------------------------- #
def _data_proto(tokenizer, rows: list[dict]):
    """A verl DataProto as the rollout hands it to the reward managers (prompts, responses, attention mask,
    data_source / reward_model / extra_info)."""
    from verl import DataProto

    n, lp, lr = len(rows), 4, 6
    prompts = torch.full((n, lp), tokenizer.pad_token_id or 0, dtype=torch.long)
    responses = torch.full((n, lr), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(n, lp + lr, dtype=torch.long)
    for i, r in enumerate(rows):
        p = tokenizer.encode(r["prompt"], add_special_tokens=False)[:lp]
        s = tokenizer.encode("mesh", add_special_tokens=False)[:lr]
        prompts[i, lp - len(p):] = torch.tensor(p)
        responses[i, :len(s)] = torch.tensor(s)
        mask[i, lp - len(p):lp] = 1
        mask[i, lp:lp + len(s)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": mask,
                 "input_ids": torch.cat([prompts, responses], 1)},
        non_tensors={"data_source": np.array(["rewardkit"] * n, dtype=object),
                     "reward_model": np.array([{"ground_truth": r["prompt"]} for r in rows], dtype=object),
                     "extra_info": np.array([{"mesh_path": r["mesh"]} for r in rows], dtype=object)})


@pytest.fixture(scope="module")
def verl_batch(policy_dir):
    pytest.importorskip("verl")
    from transformers import AutoTokenizer

    files = mesh_files()
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    rows = [{"prompt": "a red box", "mesh": str(files["red_box"])}, {"prompt": "a cone", "mesh": str(files["cone"])},
            {"prompt": "a box", "mesh": str(files["broken"])}, {"prompt": "a box", "mesh": str(files["blue_sphere"])}]
    return tok, _data_proto(tok, rows)


def test_verl_naive_reward_manager_gets_every_key_for_every_sample(verl_batch):
    """(a), legacy path: verl's NaiveRewardManager stacks the dict keys per sample; ray_trainer._validate
    then asserts every list has one entry per sample."""
    from functools import partial

    from verl.trainer.ppo.metric_utils import process_validation_metrics
    from verl.workers.reward_manager.naive import NaiveRewardManager

    from rewardkit.scoring.adapters import compute_score

    tok, data = verl_batch
    manager = NaiveRewardManager(tok, num_examine=0,
                                 compute_score=partial(compute_score, scorer_dir=str(scorer_set_dir()), device="cpu"))
    out = manager(data, return_dict=True)
    info = out["reward_extra_info"]
    assert {"score", "rewardkit_global", "rewardkit_local", "rewardkit_failed"} <= set(info)
    for key, values in info.items():
        assert len(values) == len(data), (key, len(values))
    assert info["rewardkit_failed"] == [0.0, 0.0, 1.0, 0.0]
    assert out["reward_tensor"].sum(-1)[2].item() == 0.0  # failure_score
    metrics = process_validation_metrics(list(data.non_tensor_batch["data_source"]), [str(i) for i in range(len(data))],
                                         {"reward": out["reward_tensor"].sum(-1).tolist(), **info})
    assert "rewardkit_global" in metrics["rewardkit"]


def test_verl_reward_loop_outputs_share_their_keys(verl_batch):
    """(a), reward-loop path: verl's loader (custom_reward_function.path = this module) and the reward loop's
    naive manager, one ``run_single`` per sample as the RewardLoopWorker runs them; the loop's manager then
    builds one array per key of the first sample's ``reward_extra_info``."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import load_reward_manager

    import rewardkit.scoring.adapters as adapters

    tok, data = verl_batch
    config = OmegaConf.create({"reward": {
        "custom_reward_function": {"path": adapters.__file__, "name": "compute_score",
                                   "reward_kwargs": {"scorer_dir": str(scorer_set_dir()), "stage": "global",
                                                     "device": "cpu"}},
        "reward_manager": {"source": "register", "name": "naive"}, "reward_model": {"enable": False}}})
    manager = load_reward_manager(config, tok)

    async def run_all():
        return await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data))))

    outputs = manager.loop.run_until_complete(run_all())
    keys = [set(o["reward_extra_info"]) for o in outputs]
    assert all(k == keys[0] for k in keys), keys
    assert keys[0] == {"score", "rewardkit_global", "rewardkit_failed"}  # stage="global": the local one is not run
    assert [o["reward_extra_info"]["rewardkit_failed"] for o in outputs] == [0.0, 0.0, 1.0, 0.0]
