"""Stage ``eval_gen``: the Hi-GRPO policy before and after RL, scored with AR3D-R1's Table 4 metrics.

On held-out prompts (``eval_gen.prompts``, none of them in ``rl.prompts``), each naming the demo shape it asks
for (:data:`rewardkit.demo.shapes.DEMO_SHAPES`) and an MME-3DR category, the stage samples
``samples_per_prompt`` two-step generations (the step-2 refined object) from the initial policy
(``data/rl/init_policy``) and from the final one (``data/rl/policy``), with the rl section's templates,
sampling and shape tokenizer; the references are ``references_per_prompt`` jittered copies of the demo shape,
meshed by the same tokenizer. :func:`rewardkit.eval.generation.runner.evaluate_generations` renders and scores
both runs with the protocol of ``eval_gen.protocol`` against the same references (their features are cached
once in ``data/eval_gen/cache``).

With ``random_init_extractors: true`` (the demo: no downloads, no pretrained weights) the stage writes a
random-init torchvision Inception-V3, a small Hugging Face DINOv2 and an open_clip ``rk-tiny``, each in its real
file format and marked as random-init, into ``data/eval_gen/extractors/``; the report says so in ``labels``
and the plot's title. Such figures compare the two policies with each other, never with the paper.

Writes ``reports/eval_gen.json`` (DVC metrics: ``init``, ``final`` and ``change`` per metric, overall and per
category; ``dvc metrics diff`` shows a re-run's change) and ``reports/eval_gen/``: ``init.json`` and
``final.json`` (the full results with the protocol record) and ``metrics.png`` (both runs' bars per category).
"""

from __future__ import annotations

from pathlib import Path

from pipelines._common import REPORTS_DIR, chdir_root, params, step
from rewardkit.rl.config import HiGRPOConfig
from rewardkit.rl.generation_eval import evaluate_policies

RL_DIR = Path("data/rl")


def main() -> None:
    chdir_root()
    rl_cfg = HiGRPOConfig.from_dict({**params("rl"), "output_dir": str(RL_DIR)})
    with step("eval_gen"):
        evaluate_policies(params("eval_gen"), rl_cfg, {"init": RL_DIR / "init_policy", "final": RL_DIR / "policy"},
                          Path("data/eval_gen"), REPORTS_DIR / "eval_gen.json", REPORTS_DIR / "eval_gen")


if __name__ == "__main__":
    main()
