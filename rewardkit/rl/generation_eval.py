"""A Hi-GRPO policy's generations scored with AR3D-R1's Table 4 metrics (the pipeline's ``eval_gen`` stage).

On held-out prompts, each naming the demo shape it asks for (:data:`rewardkit.demo.shapes.DEMO_SHAPES`) and an
MME-3DR category, :func:`evaluate_policies` samples ``samples_per_prompt`` two-step generations (the step-2
refined object, :func:`rewardkit.rl.sampling.sample_two_steps`) from each policy, with the RL config's templates,
sampling and shape tokenizer; the references are ``references_per_prompt`` jittered copies of the demo shape,
meshed by the same tokenizer. :func:`rewardkit.eval.generation.runner.evaluate_generations` renders and scores
every run with the same protocol against the same references (their features cached once).

With ``random_init_extractors: true`` (the demo: no downloads, no pretrained weights) it writes a random-init
torchvision Inception-V3, a small Hugging Face DINOv2 and an open_clip ``rk-tiny``, each in its real file
format and marked as random-init; the report says so in ``labels`` and the plot's title. Such figures compare
the policies with each other, never with the paper.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rewardkit.config import ConfigError
from rewardkit.eval.generation.protocol import EvalGenConfig
from rewardkit.eval.generation.random_init import write_random_init_extractors
from rewardkit.eval.generation.inputs import read_prompt_set
from rewardkit.eval.generation.plots import plot_results
from rewardkit.eval.generation.runner import evaluate_generations, load_extractors
from rewardkit.rl.sampling import sample_two_steps
from rewardkit.rl.tokenizers import create_tokenizer

METRICS = ("clip_score", "kd_incep_x100", "kd_incep_x100_std", "fd_incep", "kd_dinov2_x100", "kd_dinov2_x100_std",
           "fd_dinov2")


def heldout_prompts(p: dict, rl_prompts: list[str]) -> list[dict]:
    """The configured prompts, checked: each names a demo shape and is not an RL training prompt."""
    from rewardkit.demo.shapes import DEMO_SHAPES

    rows = [dict(r) for r in p["prompts"]]
    for r in rows:
        if r.get("shape") not in DEMO_SHAPES:
            raise ConfigError(f"eval_gen.prompts: {r!r}: shape must be one of {sorted(DEMO_SHAPES)}")
        if r["prompt"] in rl_prompts:
            raise ConfigError(f"eval_gen.prompts: {r['prompt']!r} is an rl training prompt; "
                              "the evaluation is on held-out prompts")
    return rows


def write_references(rows: list[dict], tokenizer, n: int, seed: int, folder: Path) -> dict[str, list[str]]:
    """``n`` jittered copies of each prompt's demo shape, meshed by the policy's shape tokenizer."""
    from rewardkit.demo.shapes import DEMO_SHAPES, jitter

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


def generate(policy_dir: str | Path, rl_cfg, rows: list[dict], n: int, seed: int, folder: Path) -> tuple[list[dict], int]:
    """``n`` two-step samples per prompt from the policy at ``policy_dir`` (the step-2 object), as PLY files.
    Returns one row per sample (``generation`` empty where the sample decodes to no voxel) and the count of
    empty samples."""
    import torch

    from rewardkit.rl.policy import MeshPolicy

    folder.mkdir(parents=True, exist_ok=True)
    tok = create_tokenizer(rl_cfg.shape_tokenizer)
    policy = MeshPolicy.from_pretrained(policy_dir, tokens_per_object=rl_cfg.tokens_per_object)
    policy.model.eval()
    flat = [r for r in rows for _ in range(n)]
    with torch.no_grad():
        _, s2, _ = sample_two_steps(policy, policy.model, [r["prompt"] for r in flat], rl_cfg, seed)
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


def evaluate_policies(p: Mapping[str, Any], rl_cfg: Any, runs: Mapping[str, str | Path], out_dir: str | Path,
                      report_path: str | Path, plots_dir: str | Path) -> dict:
    """Sample, render and score each policy of ``runs`` (``{"init": dir, "final": dir}``) on the held-out
    prompts of ``p`` (the ``eval_gen`` params: ``prompts``, ``samples_per_prompt``, ``references_per_prompt``,
    ``seed``, ``protocol``, ``random_init_extractors``, ``inception_input_size``) with ``rl_cfg``'s templates,
    sampling and shape tokenizer; write the report (DVC metrics), each run's full results and the plot.
    ``out_dir`` (replaced) holds the generations, references, extractors and feature cache."""
    out_dir, report_path, plots_dir = Path(out_dir), Path(report_path), Path(plots_dir)
    rows = heldout_prompts(p, list(rl_cfg.resolve_prompts()))
    for run, path in runs.items():
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no {run} policy checkpoint; run the rl stage first")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    proto = dict(p["protocol"])
    t0 = time.perf_counter()
    if p.get("random_init_extractors"):
        ext = write_random_init_extractors(out_dir / "extractors", seed=int(p["seed"]),
                                           inception_size=int(p["inception_input_size"]))
        for k, v in ext.items():
            proto[k] = {**v, **(proto.get(k) or {}), "weights": v["weights"]}
    cfg = EvalGenConfig.from_dict(proto, key="eval_gen.protocol")
    extractors = load_extractors(cfg, "cpu" if cfg.device == "auto" else cfg.device)
    tok = create_tokenizer(rl_cfg.shape_tokenizer)
    refs = write_references(rows, tok, int(p["references_per_prompt"]), int(p["seed"]), out_dir / "references")
    print(f"  {len(rows)} held-out prompts x {p['samples_per_prompt']} samples per policy; "
          f"{sum(len(v) for v in refs.values())} reference meshes; setup {time.perf_counter() - t0:.1f}s", flush=True)
    results = {}
    shape_of = {r["prompt"]: r["shape"] for r in rows}
    for run, path in runs.items():
        t = time.perf_counter()
        gen_dir = out_dir / "generations" / run
        samples, empty = generate(path, rl_cfg, rows, int(p["samples_per_prompt"]), int(p["seed"]), gen_dir)
        for i, s in enumerate(samples):  # references cycle through the shape's copies
            names = refs[shape_of[s["prompt"]]]
            s["reference"] = names[i % len(names)]
        csv_path = out_dir / f"prompts_{run}.csv"
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(samples[0]))
            w.writeheader()
            w.writerows(samples)
        objects = read_prompt_set(csv_path, gen_dir, reference_meshes=out_dir / "references")
        res = evaluate_generations(objects, cfg, out_dir / run, cache_dir=out_dir / "cache", progress=False,
                                   extractors=extractors, name=f"{run} policy ({path})")
        res.data["inputs"]["empty_samples"] = empty
        results[run] = res.data
        m = res.data["metrics"]["overall"]
        print(f"  {run}: " + ", ".join(f"{k} {m[k]:.4g}" for k in ("clip_score", "kd_incep_x100", "kd_dinov2_x100",
                                                                 "fd_incep") if m.get(k) is not None)
              + f" ({res.data['inputs']['evaluated']}/{len(objects)} samples; {empty} empty) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
    first, last = list(results)[0], list(results)[-1]
    labels = results[first]["labels"]
    init, final = flat_metrics(results[first]), flat_metrics(results[last])
    report = {first: init, last: final, "change": change(init, final),
              "random_init_extractors": results[first]["random_init_extractors"], "labels": labels,
              "protocol": {k: results[first]["protocol"][k] for k in ("views", "size", "shading")},
              "heldout_prompts": len(rows), "samples_per_prompt": int(p["samples_per_prompt"])}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    plots_dir.mkdir(parents=True)
    for run, data in results.items():
        (plots_dir / f"{run}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_results({"init policy": results[first], "after RL": results[last]}, plots_dir / "metrics.png",
                 title="Hi-GRPO policy before vs after RL on held-out prompts (AR3D-R1 Table 4 metrics)")
    for label in labels:
        print(f"  note: {label}")
    print(f"  report {report_path}, plot {plots_dir / 'metrics.png'}")
    return report


__all__ = ["METRICS", "change", "evaluate_policies", "flat_metrics", "generate", "heldout_prompts", "write_references"]
