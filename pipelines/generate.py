"""Stage ``generate``: the demo data set (meshes, items, candidates) from the ``generate`` params."""

from __future__ import annotations

from pipelines._common import DEMO_DIR, chdir_root, params, step


def main() -> None:
    chdir_root()
    p = params("generate")
    from rewardkit.demo import DemoConfig, generate

    cfg = DemoConfig(
        prompts_per_category=int(p["prompts_per_category"]),
        holdout_per_category=int(p["holdout_per_category"]),
        categories=tuple(p["categories"]),
        geometry=tuple(p["geometry"]),
        texture=tuple(p["texture"]),
        mixed=int(p["mixed"]),
        seed=int(p["seed"]),
    )
    with step("generate"):
        items, cands = generate(cfg, DEMO_DIR)
        print(f"  {items.height} candidates, {items['prompt_id'].n_unique()} prompts "
              f"({cands.filter(cands['split'] == 'holdout')['prompt_id'].n_unique()} held out) in {DEMO_DIR}")


if __name__ == "__main__":
    main()
