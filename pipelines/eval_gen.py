"""Stage ``eval_gen``: the Hi-GRPO policy before and after RL, scored with AR3D-R1's Table 4 metrics.

On held-out prompts (``eval_gen.prompts``, none of them in ``rl.prompts``), each naming the demo shape it asks
for (:data:`rewardkit.rl.shapes.DEMO_SHAPES`) and an MME-3DR category, the stage samples
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

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

from pipelines._common import REPORTS_DIR, chdir_root, params, step

RL_DIR = Path("data/rl")
OUT_DIR = Path("data/eval_gen")
REPORT = REPORTS_DIR / "eval_gen.json"
PLOTS = REPORTS_DIR / "eval_gen"
RUNS = {"init": RL_DIR / "init_policy", "final": RL_DIR / "policy"}
METRICS = ("clip_score", "kd_incep_x100", "kd_incep_x100_std", "fd_incep", "kd_dinov2_x100", "kd_dinov2_x100_std",
           "fd_dinov2")


def heldout_prompts(p: dict, rl_prompts: list[str]) -> list[dict]:
    """The configured prompts, checked: each names a demo shape and is not an RL training prompt."""
    from rewardkit.rl.shapes import DEMO_SHAPES

    rows = [dict(r) for r in p["prompts"]]
    for r in rows:
        if r.get("shape") not in DEMO_SHAPES:
            raise SystemExit(f"params.yaml eval_gen.prompts: {r!r}: shape must be one of {sorted(DEMO_SHAPES)}")
        if r["prompt"] in rl_prompts:
            raise SystemExit(f"params.yaml eval_gen.prompts: {r['prompt']!r} is an rl training prompt; "
                             "the evaluation is on held-out prompts")
    return rows


def write_references(rows: list[dict], tokenizer, n: int, seed: int, folder: Path) -> dict[str, list[str]]:
    """``n`` jittered copies of each prompt's demo shape, meshed by the policy's shape tokenizer."""
    from rewardkit.rl.shapes import DEMO_SHAPES, jitter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for shape in sorted({r["shape"] for r in rows}):
        base = DEMO_SHAPES[shape].occupancy(tokenizer.resolution)
        names = []
        for k in range(n):
            occ = base if k == 0 else jitter(base, rng, max_shift=1)
            mesh = tokenizer.to_mesh(occ)
            name = f"{shape}-{k}.ply"
            mesh.export(folder / name)
            names.append(name)
        out[shape] = names
    return out


def generate(policy_dir: Path, rl_cfg, rows: list[dict], n: int, seed: int, folder: Path) -> tuple[list[dict], int]:
    """``n`` two-step samples per prompt from the policy at ``policy_dir`` (the step-2 object), as PLY files.
    Returns one row per sample (``generation`` empty where the sample decodes to no voxel) and the count of
    empty samples."""
    import torch

    from rewardkit.rl.policy import MeshPolicy
    from rewardkit.rl.tokenizers import create_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = create_tokenizer(rl_cfg.shape_tokenizer)
    policy = MeshPolicy.from_pretrained(policy_dir, tokens_per_object=rl_cfg.tokens_per_object)
    policy.model.eval()
    flat = [r for r in rows for _ in range(n)]
    with torch.no_grad():
        s1 = policy.rollout_step(policy.model, [rl_cfg.step1_template.format(prompt=r["prompt"]) for r in flat],
                                 rl_cfg.sampling, seed)
        ctx2 = [rl_cfg.step2_template.format(prompt=r["prompt"], plan=s.reasoning_text) for r, s in zip(flat, s1)]
        s2 = policy.rollout_step(policy.model, ctx2, rl_cfg.sampling, seed + 7)
    occ = tok.decode(np.stack([s.codes for s in s2]))
    out, empty = [], 0
    for i, (r, o) in enumerate(zip(flat, occ)):
        mesh = tok.to_mesh(o)
        oid = f"{r['shape']}-{i:03d}"
        if mesh is None:
            empty += 1
        else:
            mesh.export(folder / f"{oid}.ply")
        out.append({"object_id": oid, "prompt": r["prompt"], "category": r["category"],
                    "generation": f"{oid}.ply" if mesh is not None else ""})
    return out, empty


def flat_metrics(result: dict) -> dict:
    """What DVC shows of one run: the figures overall and per category, and the counts."""
    m = result["metrics"]

    def pick(d: dict) -> dict:
        return {k: d[k] for k in METRICS if d.get(k) is not None} | {"objects": d["objects"]}

    return {"overall": pick(m["overall"]), "per_category": {c: pick(v) for c, v in m["per_category"].items()},
            "excluded": result["inputs"]["excluded_count"]}


def change(init: dict, final: dict) -> dict:
    out = {}
    for k, v in final["overall"].items():
        if k in METRICS and not k.endswith("_std") and k in init["overall"]:
            out[k] = v - init["overall"][k]
    return out


def main() -> None:
    chdir_root()
    p = dict(params("eval_gen"))
    rl_params = dict(params("rl"))
    from rewardkit.eval.generation.protocol import EvalGenConfig
    from rewardkit.eval.generation.runner import (
        evaluate_generations,
        load_extractors,
        plot_results,
        read_prompt_set,
    )
    from rewardkit.rl.config import HiGRPOConfig
    from rewardkit.rl.tokenizers import create_tokenizer

    rl_params["output_dir"] = str(RL_DIR)
    rl_cfg = HiGRPOConfig.from_dict(rl_params)
    rows = heldout_prompts(p, list(rl_cfg.resolve_prompts()))
    for run, path in RUNS.items():
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path}: no {run} policy checkpoint; run the rl stage first")
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    proto = dict(p["protocol"])
    labels: list[str] = []
    with step("eval_gen"):
        t0 = time.perf_counter()
        if p.get("random_init_extractors"):
            from rewardkit.eval.generation.random_init import (
                write_random_init_extractors,
            )

            ext = write_random_init_extractors(OUT_DIR / "extractors", seed=int(p["seed"]),
                                               inception_size=int(p["inception_input_size"]))
            for k, v in ext.items():
                proto[k] = {**v, **(proto.get(k) or {}), "weights": v["weights"]}
        cfg = EvalGenConfig.from_dict(proto, key="eval_gen.protocol")
        extractors = load_extractors(cfg, "cpu" if cfg.device == "auto" else cfg.device)
        tok = create_tokenizer(rl_cfg.shape_tokenizer)
        refs = write_references(rows, tok, int(p["references_per_prompt"]), int(p["seed"]), OUT_DIR / "references")
        print(f"  {len(rows)} held-out prompts x {p['samples_per_prompt']} samples per policy; "
              f"{sum(len(v) for v in refs.values())} reference meshes; setup {time.perf_counter() - t0:.1f}s", flush=True)
        results = {}
        for run, path in RUNS.items():
            t = time.perf_counter()
            gen_dir = OUT_DIR / "generations" / run
            samples, empty = generate(path, rl_cfg, rows, int(p["samples_per_prompt"]), int(p["seed"]), gen_dir)
            shape_of = {r["prompt"]: r["shape"] for r in rows}
            for i, s in enumerate(samples):  # references cycle through the shape's copies
                names = refs[shape_of[s["prompt"]]]
                s["reference"] = names[i % len(names)]
            csv_path = OUT_DIR / f"prompts_{run}.csv"
            with open(csv_path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(samples[0]))
                w.writeheader()
                w.writerows(samples)
            objects = read_prompt_set(csv_path, gen_dir, reference_meshes=OUT_DIR / "references")
            res = evaluate_generations(objects, cfg, OUT_DIR / run, cache_dir=OUT_DIR / "cache", progress=False,
                                       extractors=extractors, name=f"{run} policy ({path})")
            res.data["inputs"]["empty_samples"] = empty
            results[run] = res.data
            m = res.data["metrics"]["overall"]
            print(f"  {run}: " + ", ".join(f"{k} {m[k]:.4g}" for k in ("clip_score", "kd_incep_x100", "kd_dinov2_x100",
                                                                     "fd_incep") if m.get(k) is not None)
                  + f" ({res.data['inputs']['evaluated']}/{len(objects)} samples; {empty} empty) in "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
        labels = results["init"]["labels"]
    init, final = flat_metrics(results["init"]), flat_metrics(results["final"])
    report = {"init": init, "final": final, "change": change(init, final),
              "random_init_extractors": results["init"]["random_init_extractors"], "labels": labels,
              "protocol": {k: results["init"]["protocol"][k] for k in ("views", "size", "shading")},
              "heldout_prompts": len(rows), "samples_per_prompt": int(p["samples_per_prompt"])}
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    if PLOTS.exists():
        shutil.rmtree(PLOTS)
    PLOTS.mkdir(parents=True)
    for run, data in results.items():
        (PLOTS / f"{run}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_results({"init policy": results["init"], "after RL": results["final"]}, PLOTS / "metrics.png",
                 title="Hi-GRPO policy before vs after RL on held-out prompts (AR3D-R1 Table 4 metrics)")
    for label in labels:
        print(f"  note: {label}")
    print(f"  report {REPORT}, plot {PLOTS / 'metrics.png'}")


if __name__ == "__main__":
    main()
