"""The GPU check (issue 26, item 6): one run on one H100/H200 that prints, side by side,

1. FSDP step peak memory against the memory plan: ``HiGRPOTrainer.optimize`` on a random-init
   Qwen2.5-0.5B-shaped policy (``benchmarks/bench_rl_gpu.py``'s policy, batch and measurement, in fresh
   processes), FSDP on 1 device, bf16-mixed, activation checkpointing off / on; measured
   ``torch.cuda.max_memory_allocated`` against ``rewardkit.plan.memory.plan_memory``'s peak of the same
   configuration (its training phases), and their ratio;
2. the chunked log-prob path: ``rewardkit.rl.policy.sequence_logprobs`` (chunks of 512 scored tokens) against a
   plain full-vocabulary ``log_softmax`` over ``[B, T, V]``, forward + backward on the same model: peak CUDA
   memory above the model's own, milliseconds, and the largest log-prob difference;
3. NVIDIA EGL render speed: rewardkit's ``Renderer`` (``PYOPENGL_PLATFORM=egl``) on procedurally made trimesh
   primitives, views/s at 512 px, and the EGL vendor / GL renderer strings the context got.

    python benchmarks/gpu_check.py --json gpu_check.json    # on the GPU machine (target: <= 8 minutes)
    python benchmarks/gpu_check.py --smoke                  # CPU: a tiny policy, gloo, a few 64 px views

Needs only torch, lightning, transformers (+ trimesh / pyrender / PyOpenGL for section 3) and this tree: no
network, no vLLM, no shared meshes. Each section's failure or missing dependency is caught and reported
("skipped: <why>" / "failed: <error>"); the summary is always printed, and ``--json`` always written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1e6


def _device_info() -> dict:
    info = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
            info["gpus"] = torch.cuda.device_count()
    except Exception as exc:  # reported, never fatal
        info["torch"] = f"unavailable: {exc}"
    return info


# -- 1. FSDP peak against the plan -------------------------------------------------------------------

def _plan_for(policy: Path, batch: dict, ckpt: bool, precision: str) -> dict:
    """The plan's peak for bench_rl_gpu.py's case: FSDP on 1 device, reference copy, step-2 sequences."""
    from rewardkit.plan.memory import count_model, plan_memory
    from rewardkit.rl.policy import LOGPROB_CHUNK_TOKENS, MeshPolicy

    counts = count_model(MeshPolicy.from_pretrained(policy, tokens_per_object=batch["tokens_per_object"],
                                                    meta=True).model)
    n_seqs = batch["group_size"] * batch["prompts_per_step"]
    seq_len = batch["context"] + 2 * batch["reasoning"] + batch["tokens_per_object"] + 2  # step 2's longest
    plan = plan_memory(counts, strategy="fsdp", world_size=1, precision=precision,
                       micro_batch_size=batch["micro_batch_size"], seq_len=seq_len,
                       scored_len=batch["reasoning"] + batch["tokens_per_object"] + 2,
                       activation_checkpointing=ckpt, reference="copy", logprob_chunk=LOGPROB_CHUNK_TOKENS,
                       accumulation=2 * -(-n_seqs // batch["micro_batch_size"]))
    train = [k for k in plan.phases if k != "rollout"]  # the benchmark times optimize() only: no generation
    phase = max(train, key=plan.phase_total)
    return {"predicted": plan.persistent_total + plan.phase_total(phase), "phase": phase, "params": counts.total,
            "terms": {k: v for k, v in {**plan.persistent, **plan.phases[phase]}.items() if v}}


def section_fsdp(smoke: bool, tmp: Path, timeout: float) -> dict:
    import torch

    from benchmarks import bench_rl_gpu as bg
    from rewardkit.rl.policy import build_tiny_policy

    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        return {"status": "skipped: no CUDA device (use --smoke for the CPU code path)"}
    arch = dict(bg.POLICY_TINY if smoke else bg.POLICY_05B)
    batch = dict(bg.BATCH_TINY if smoke else bg.BATCH_GPU)
    precision = "bf16-mixed"
    policy = tmp / "policy"
    if not policy.exists():
        codebook = arch.pop("codebook_size")
        build_tiny_policy(policy, bg.WORDS, codebook, batch["tokens_per_object"], arch="qwen2", **arch)
    rows = []
    for ckpt in (False, True):
        case = tmp / f"fsdp-{int(ckpt)}"
        case.mkdir(exist_ok=True)
        spec = dict(policy=str(policy), dir=str(case), accelerator="cuda" if cuda else "cpu", devices=1,
                    strategy="fsdp", ckpt=ckpt, precision=precision, batch=batch, steps=1 if smoke else 2,
                    warmup=0 if smoke else 1, threads=1 if smoke else 8)
        row = bg.measure(spec, timeout)
        plan = _plan_for(policy, batch, ckpt, precision)
        row.update(predicted=plan["predicted"], plan_phase=plan["phase"], plan_terms=plan["terms"])
        measured = row.get("peak_allocated", row.get("peak_rss"))
        row["measured_kind"] = "cuda max_memory_allocated" if cuda else "process peak RSS (VmHWM, CPU smoke)"
        if measured is not None:
            row["measured"] = measured
            row["ratio"] = measured / plan["predicted"]
        rows.append(row)
    failed = [r["error"] for r in rows if "error" in r]
    return {"status": f"failed: {failed[0]}" if failed else "ok", "rows": rows, "batch": batch,
            "params": rows[0].get("params")}


def print_fsdp(res: dict) -> None:
    if not res.get("rows"):
        return
    print(f"{'act ckpt':<9}{'s / update':>11}{'predicted MB':>14}{'measured MB':>13}{'meas/pred':>10}  plan's peak phase")
    for r in res.get("rows", []):
        head = f"{('on' if r['activation_checkpointing'] else 'off'):<9}"
        if "error" in r:
            print(head + f"  failed: {r['error']}")
            continue
        print(head + f"{r['s_per_update']:11.3f}{r['predicted'] / MB:14.1f}{r['measured'] / MB:13.1f}"
              f"{r['ratio']:10.2f}  {r['plan_phase']}")
    print(f"(measured: {res['rows'][0].get('measured_kind')}, whole run incl. setup; predicted: "
          f"rewardkit.plan.memory.plan_memory, persistent + largest training phase)")


# -- 2. chunked log-probs against the plain log_softmax ---------------------------------------------

def section_logprobs(smoke: bool, tmp: Path, reps: int) -> dict:
    import torch

    from rewardkit.rl.engine import checkpoint_decoder_layers
    from rewardkit.rl.policy import PHASE_MESH, MeshPolicy, RolloutBatch, forward_logits, sequence_logprobs

    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        return {"status": "skipped: no CUDA device"}
    policy = tmp / "policy"
    if not policy.exists():
        return {"status": "skipped: section 1 did not build the policy"}
    dev = torch.device("cuda" if cuda else "cpu")
    model = MeshPolicy.from_pretrained(policy, tokens_per_object=64 if smoke else 512).model
    model = model.to(dev, torch.bfloat16 if cuda else torch.float32)
    checkpoint_decoder_layers(model)  # as the trainer does (and, like it, eval mode: no dropout)
    model.eval()
    V = model.get_output_embeddings().weight.shape[0]
    B, T = (2, 64) if smoke else (2, 2048)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (B, T), generator=g).to(dev)
    batch = RolloutBatch(ids, torch.ones(B, T, dtype=torch.long, device=dev),
                         torch.ones(B, T - 1, device=dev), torch.full((B, T - 1), PHASE_MESH, device=dev))

    def plain():
        lg = forward_logits(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False).logits[:, :-1].float()
        return torch.log_softmax(lg, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1) * batch.mask

    def chunked():
        return sequence_logprobs(model, batch, chunk_tokens=512)

    out = {}
    values = {}
    for name, fn in (("plain", plain), ("chunked_512", chunked)):
        times, peak = [], None
        for i in range(reps + 1):
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            lp = fn()
            lp.sum().backward()
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
            if i:  # the first is a warm-up
                times.append((time.perf_counter() - t0) * 1e3)
            values[name] = lp.detach().float()
            del lp
        out[name] = {"ms": statistics.median(times), "peak_extra": peak}
    model.zero_grad(set_to_none=True)
    diff = (values["plain"] - values["chunked_512"]).abs().max().item()
    return {"status": "ok", "B": B, "T": T, "V": V, "dtype": "bf16" if cuda else "fp32", "reps": reps,
            "max_abs_logprob_diff": diff, **out}


def print_logprobs(res: dict) -> None:
    if "plain" not in res:
        return
    print(f"B={res['B']} T={res['T']} V={res['V']:,} ({res['dtype']} model, every position "
          f"scored; decoder layers checkpointed as the trainer does), forward + backward, median of {res['reps']}")
    print(f"{'path':<14}{'ms':>10}{'peak above model MB':>22}")
    for k in ("plain", "chunked_512"):
        r = res[k]
        pk = "n/a (CPU)" if r["peak_extra"] is None else f"{r['peak_extra'] / MB:.1f}"
        print(f"{k:<14}{r['ms']:10.1f}{pk:>22}")
    print(f"max |log-prob difference| {res['max_abs_logprob_diff']:.2e}")


# -- 3. EGL render speed -----------------------------------------------------------------------------

def _gl_strings(renderer) -> dict:
    out = {"PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM")}
    try:
        from OpenGL import GL

        plat = renderer._offscreen._platform
        plat.make_current()
        out["gl_vendor"] = GL.glGetString(GL.GL_VENDOR).decode()
        out["gl_renderer"] = GL.glGetString(GL.GL_RENDERER).decode()
        out["gl_version"] = GL.glGetString(GL.GL_VERSION).decode()
        display = getattr(plat, "_egl_display", None)
        if display is not None:
            from OpenGL import EGL

            out["egl_vendor"] = EGL.eglQueryString(display, EGL.EGL_VENDOR).decode()
            out["egl_version"] = EGL.eglQueryString(display, EGL.EGL_VERSION).decode()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def section_render(smoke: bool) -> dict:
    try:
        import trimesh

        from rewardkit.render import Renderer, get_protocol
    except Exception as exc:  # a missing trimesh / pyrender / PyOpenGL is a skip
        return {"status": f"skipped: {type(exc).__name__}: {exc}"}
    size = 64 if smoke else 512
    meshes = {"icosphere": trimesh.creation.icosphere(subdivisions=2 if smoke else 5),
              "box": trimesh.creation.box(extents=(1.0, 0.6, 0.3)),
              "cylinder": trimesh.creation.cylinder(radius=0.3, height=1.0, sections=64),
              "capsule": trimesh.creation.capsule(height=0.8, radius=0.25, count=[64, 64])}
    if smoke:
        meshes = dict(list(meshes.items())[:2])
    protocol = get_protocol("orbit6", size=size)
    modes = ("rgb", "geometry", "normal")
    rounds = 1 if smoke else 5
    with Renderer(size) as r:
        strings = _gl_strings(r)
        r.render(meshes["box"], protocol, modes)  # warm-up: shader compilation
        r.render_seconds = 0.0
        t0 = time.perf_counter()
        views = 0
        for _ in range(rounds):
            for m in meshes.values():
                out = r.render(m, protocol, modes)
                views += sum(len(v) for v in out.values())
        wall = time.perf_counter() - t0
        inside = r.render_seconds
    faces = {k: int(len(m.faces)) for k, m in meshes.items()}
    return {"status": "ok", "size": size, "views": views, "seconds": wall, "views_per_s": views / wall,
            "gl_seconds": inside, "modes": list(modes), "faces": faces, **strings}


def print_render(res: dict) -> None:
    if "views" not in res:
        return
    print(f"{res['views']} views ({', '.join(res['modes'])}; orbit6) of {len(res['faces'])} trimesh primitives "
          f"({', '.join(f'{k} {v:,} faces' for k, v in res['faces'].items())}) at {res['size']} px")
    print(f"{'views/s':>10}{'wall s':>9}{'in GL s':>9}   EGL vendor / GL renderer")
    print(f"{res['views_per_s']:10.1f}{res['seconds']:9.2f}{res['gl_seconds']:9.2f}   "
          f"{res.get('egl_vendor', '?')} / {res.get('gl_renderer', '?')} ({res.get('gl_version', '?')})"
          + (f"  [strings: {res['error']}]" if "error" in res else ""))


# -- driver ------------------------------------------------------------------------------------------

SECTIONS = ("fsdp", "logprobs", "render")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny policy, gloo, few small views")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--reps", type=int, default=None, help="timed log-prob repetitions (default 3; smoke 1)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per FSDP case")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    result = {"smoke": a.smoke, "device": _device_info()}
    wanted = [s for s in a.sections.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        for name in SECTIONS:
            if name not in wanted:
                result[name] = {"status": "skipped: not requested"}
                continue
            t0 = time.perf_counter()
            print(f"== {name} ...", flush=True)
            try:
                if name == "fsdp":
                    res = section_fsdp(a.smoke, Path(tmp), a.timeout)
                elif name == "logprobs":
                    res = section_logprobs(a.smoke, Path(tmp), a.reps or (1 if a.smoke else 3))
                else:
                    res = section_render(a.smoke)
            except Exception as exc:  # every section reports, the summary always prints
                res = {"status": f"failed: {type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-3000:]}
            res["section_seconds"] = time.perf_counter() - t0
            result[name] = res
    result["total_seconds"] = time.perf_counter() - t_start
    d = result["device"]
    print(f"\n=== GPU check ({'smoke, CPU' if a.smoke else 'full'}): torch {d.get('torch')}, "
          f"{d.get('gpu', 'no GPU')}{' ' + str(d['gpu_memory_gb']) + ' GB' if 'gpu_memory_gb' in d else ''}")
    for name, title, printer in (("fsdp", "1. FSDP (1 device, bf16-mixed) step peak vs memory plan", print_fsdp),
                                 ("logprobs", "2. log-probs: chunked (512) vs plain log_softmax", print_logprobs),
                                 ("render", "3. EGL render speed (rewardkit Renderer)", print_render)):
        res = result[name]
        print(f"\n{title}: {res['status']} ({res.get('section_seconds', 0):.1f} s)")
        try:
            printer(res)
        except Exception as exc:
            print(f"  (could not print: {exc})")
    summary = {n: result[n]["status"] for n in SECTIONS}
    result["summary"] = summary
    print("\nsummary: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + f"; total {result['total_seconds']:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {a.json}")
    return 0 if all(v == "ok" or v.startswith("skipped") for v in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
