"""``rewardkit eval-gen``: a generator's CLIP score, KD and FD over rendered views, as AR3D-R1 reports them.

Exit codes: 0 every object evaluated; 1 some generations or references were missing or broken (reported on
stderr and in the result's ``inputs.excluded``; the rest were evaluated); 2 usage or configuration error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rewardkit.cli.options import config_options

from rewardkit.cli.errors import UserError


@click.command("eval-gen")
@click.argument("generations", type=click.Path(path_type=Path))
@click.option("--prompts", "prompts", required=True, type=click.Path(path_type=Path),
              help="CSV: object_id,prompt[,category][,generation][,reference].")
@click.option("--reference-meshes", type=click.Path(path_type=Path), default=None,
              help="Folder of reference meshes (<object_id>.glb ... or the CSV's reference column), rendered "
                   "with the same protocol.")
@click.option("--reference-renders", type=click.Path(path_type=Path), default=None,
              help="Folder of reference renders: <object_id>/ holding a rewardkit render folder or images "
                   "(000.png ...).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output folder: result.json, result.png, renders/, cache/.")
@config_options("YAML/JSON protocol config (an 'eval_gen:' section is used if present).",
                "views=orbit6, size=299, shading=untextured, inception.weights=pt_inception.pth, clip.prompt=full")
@click.option("--inception", default=None, help="Inception-V3 weights file (= --set inception.weights=...).")
@click.option("--dinov2", default=None, help="DINOv2 folder (= --set dinov2.weights=...).")
@click.option("--clip-weights", default=None, help="open_clip checkpoint (= --set clip.weights=...).")
@click.option("--clip-arch", default=None, help="open_clip architecture (= --set clip.arch=..., default ViT-B-32).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache folder (default OUT/cache).")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def eval_gen(generations, prompts, reference_meshes, reference_renders, out, config_path, sets, inception, dinov2,
             clip_weights, clip_arch, cache_dir, as_json) -> None:
    """Evaluate the meshes in GENERATIONS against references: CLIP score, KD_incep x100, KD_dinov2 x100,
    FD_incep, overall and per category (docs/generator-evaluation.md).

    Every view of every generation and every reference is featurized (features cached per render); a
    missing or broken file is reported and its object left out of every set (exit code 1).
    """
    from rewardkit.eval.generation.features import FeatureError
    from rewardkit.eval.generation.protocol import load_eval_config
    from rewardkit.eval.generation.inputs import EvalInputError, read_prompt_set
    from rewardkit.eval.generation.plots import plot_results
    from rewardkit.eval.generation.runner import evaluate_generations

    if (reference_meshes is None) == (reference_renders is None):
        raise click.UsageError("give exactly one of --reference-meshes and --reference-renders")
    cfg = load_eval_config(config_path, list(sets), **{"inception.weights": inception, "dinov2.weights": dinov2,
                                                       "clip.weights": clip_weights, "clip.arch": clip_arch})
    try:
        objects = read_prompt_set(prompts, generations, reference_meshes=reference_meshes,
                                  reference_renders=reference_renders)
        out.mkdir(parents=True, exist_ok=True)
        result = evaluate_generations(objects, cfg, out, cache_dir=cache_dir,
                                      log=lambda s: click.echo(s, err=True))
    except (EvalInputError, FeatureError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{getattr(exc, 'filename', None) or out}: {exc.strerror or exc}") from None
    result.write(out / "result.json")
    plot_results({"generations": result.data}, out / "result.png")
    d = result.data
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        for label in d["labels"]:
            click.echo(f"note: {label}", err=True)
        m = d["metrics"]["overall"]
        parts = [f"{k} {m[k]:.4g}" for k in ("clip_score", "kd_incep_x100", "kd_dinov2_x100", "fd_incep")
                 if m.get(k) is not None]
        click.echo(f"{d['inputs']['evaluated']} of {d['inputs']['objects']} objects: " + ", ".join(parts))
        for cat, cm in d["metrics"]["per_category"].items():
            click.echo(f"  {cat} ({cm['objects']}): " + ", ".join(
                f"{k} {cm[k]:.4g}" for k in ("clip_score", "kd_incep_x100", "kd_dinov2_x100", "fd_incep")
                if cm.get(k) is not None))
        click.echo(f"result: {out / 'result.json'}, plot: {out / 'result.png'}")
    if d["inputs"]["excluded"]:
        click.echo(f"{d['inputs']['excluded_count']} excluded:", err=True)
        for e in d["inputs"]["excluded"]:
            click.echo(f"  {e['object_id']}: {e['what']}: {e['error']}", err=True)
        sys.exit(1)
