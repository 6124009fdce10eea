"""Reward functions for RL frameworks, backed by a local scorer or the HTTP scorer service.

TRL (``GRPOTrainer(reward_funcs=...)``): a callable ``(prompts, completions, **kwargs) -> list[float | None]``::

    from rewardkit.scoring.adapters import trl_reward_function
    reward_global = trl_reward_function("scorers/", stage="global")          # local, loads once
    reward_local = trl_reward_function(url="http://gpu-box:8000", stage="local")   # remote service
    trainer = GRPOTrainer(..., reward_funcs=[reward_global, reward_local], ...)

Each completion must resolve to a mesh: OBJ text (``v``/``f`` lines, as LLaMA-Mesh-style language
models write meshes), a trimesh object, a dict with ``"mesh"``, a chat message list whose last
message's ``content`` is one of those (a string or content parts ``[{"type": "text", "text": ...}]``),
or pass ``mesh_key="mesh_path"`` to read the meshes from a dataset column forwarded in ``kwargs``; or
give ``completion_to_mesh`` (e.g. decode the policy's 3D tokens). A completion that is a file path is
read only with ``read_paths=True`` (otherwise a policy could be rewarded for naming ``cube.obj``).
Prompts may be strings or chat message lists (the last user message is used). A sample that cannot be
scored gets ``failure_score`` (default ``None``, TRL's "not applicable"). Component scores are reported
through TRL's ``log_extra`` hook every call (``None`` for failed samples, so the completions table never
shows a previous step's scores); an ensemble scorer's std goes to ``rewardkit/<name>_std`` and the
reward's std per sample to the function's ``last_std``. With ``stage`` (or ``weights``) only those scorers of a set are loaded
onto the device, rendered for and run. ``device`` defaults to ``auto`` (:mod:`rewardkit.devices`).

verl (``custom_reward_function.path=<this module's file | pkg://rewardkit.scoring.adapters>``,
``.name=compute_score``)::

    compute_score(data_source, solution_str, ground_truth, extra_info=None, *, scorer_dir=..., stage=...)

``solution_str`` is OBJ text (a path only with ``read_paths=True``) or ``extra_info["mesh_path"]`` names
the mesh file; every returned dict has the same keys (a failed sample too), as verl's reward managers
and validation stack them per key. The prompt is
``extra_info["prompt"]`` or else ``ground_truth``. Extra keyword arguments come from verl's
``reward_kwargs``: ``scorer_dir`` or ``server_url``, ``stage`` (``global``/``local``) or ``weights``
(``{"global": 1.0, "local": 1.0}``), ``return_dict``, ``failure_score``, ``device``. Scorers and clients are
cached per process (verl calls the function once per sample). ``compute_score_batch`` takes lists.

Weights and stages: with ``stage`` the reward is that scorer's score; otherwise the weighted sum over
``weights`` (default: every scorer, weight 1). AR3D-R1 feeds raw sums to the group normalisation; scores
are comparable only within a prompt's group.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------- #
# backends
# ---------------------------------------------------------------------------------------------------- #


class LocalBackend:
    """Scores meshes in-process with a ScorerSet (rendered once for all scorers)."""

    def __init__(self, scorers: Any, *, device: str | None = "auto", batch_size: int = 8,
                 render_size: int | None = None, only: Sequence[str] | None = None) -> None:
        from rewardkit.devices import resolve_device
        from rewardkit.scoring.api import as_scorer_set
        from rewardkit.scoring.base import ScorerSet

        self.scorers = as_scorer_set(scorers, device=resolve_device(device, what="device"))
        if only is not None:  # score only the scorers the reward uses (stage="global": no local renders)
            missing = [k for k in only if k not in self.scorers.scorers]
            if missing:
                raise KeyError(f"no scorer {missing} in this scorer set (have {self.scorers.names()})")
            self.scorers = ScorerSet({k: self.scorers[k] for k in only})
        self.batch_size, self.render_size = batch_size, render_size
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return self.scorers.names()

    def std_names(self) -> list[str]:
        """The scorers that report a std (ensembles, kind ``stage-ensemble``)."""
        return [k for k, s in self.scorers.items() if getattr(s, "members", None) is not None]

    def score(self, meshes: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, Any]]:
        from rewardkit.scoring.api import score_meshes

        with self._lock:  # one GL context / model at a time
            results = score_meshes(list(meshes), list(prompts), self.scorers, batch_size=self.batch_size,
                                   render_size=self.render_size)
        return [{"scores": r.scores, "std": r.std, "error": r.error} for r in results]


class RemoteBackend:
    """Uploads meshes to a running scorer service; requests run concurrently so the server batches them."""

    def __init__(self, url: str, *, max_concurrency: int = 16, timeout: float = 300.0) -> None:
        from rewardkit.scoring.client import ScorerClient

        self.client = ScorerClient(url, timeout=timeout)
        self.max_concurrency = max(1, int(max_concurrency))
        self._names: list[str] | None = None
        self._std_names: list[str] = []

    def _health(self) -> None:
        scorers = self.client.health()["scorers"]
        self._names = list(scorers)
        self._std_names = [k for k, d in scorers.items() if isinstance(d, Mapping) and d.get("members") is not None]

    def names(self) -> list[str]:
        if self._names is None:
            self._health()
        return list(self._names or [])

    def std_names(self) -> list[str]:
        """The service's scorers that report a std (their /health entry has ``members``)."""
        if self._names is None:
            self._health()
        return list(self._std_names)

    def _one(self, mesh: Any, prompt: str) -> dict[str, Any]:
        try:
            res = self.client.score_mesh(mesh, prompt)
            return {"scores": res["scores"], "std": dict(res.get("std") or {}), "error": None}
        except Exception as exc:
            return {"scores": {}, "std": {}, "error": f"{type(exc).__name__}: {exc}"}

    def score(self, meshes: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(min(self.max_concurrency, max(1, len(meshes)))) as pool:
            return list(pool.map(self._one, meshes, prompts))


def make_backend(scorer: Any = None, *, url: str | None = None, device: str | None = "auto",
                 only: Sequence[str] | None = None, **kw: Any) -> LocalBackend | RemoteBackend:
    """A local backend (scorer object, directory or Hub id; ``device`` by the one device rule, default
    ``auto``) or a remote one (``url``). ``only``: the scorer names the reward needs (local backends then
    render and score only those)."""
    if (scorer is None) == (url is None):
        raise ValueError("give exactly one of a scorer (object or directory) and url (a rewardkit serve address)")
    if url is not None:
        return RemoteBackend(url, **{k: v for k, v in kw.items() if k in ("max_concurrency", "timeout")})
    return LocalBackend(scorer, device=device, only=only,
                        **{k: v for k, v in kw.items() if k in ("batch_size", "render_size")})


def needed_scorers(stage: str | None, weights: Mapping[str, float] | None) -> list[str] | None:
    """The scorer names a reward with this ``stage`` / ``weights`` reads (None: all of them)."""
    if stage is not None:
        return [stage]
    if weights is not None:
        return list(weights)
    return None


# ---------------------------------------------------------------------------------------------------- #
# helpers
# ---------------------------------------------------------------------------------------------------- #
def _text_of(prompt: Any) -> str:
    """A prompt string from a string or a chat message list (last user message)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return _text_of(prompt.get("content", ""))
    if isinstance(prompt, Sequence):
        msgs = [m for m in prompt if isinstance(m, Mapping)]
        users = [m for m in msgs if m.get("role") == "user"] or msgs
        if users:
            content = users[-1].get("content", "")
            if isinstance(content, list):  # multimodal content parts
                return " ".join(str(c.get("text", "")) for c in content if isinstance(c, Mapping)).strip()
            return str(content)
    return str(prompt)


def _parts_text(parts: Sequence[Any]) -> str:
    """The text of a content-parts list (``[{"type": "text", "text": ...}, ...]``; other parts ignored)."""
    return "\n".join(str(p.get("text", "")) for p in parts
                     if isinstance(p, Mapping) and p.get("type", "text") == "text" and "text" in p)


def default_completion_to_mesh(completion: Any, *, read_paths: bool = False) -> Any:
    """OBJ text, a trimesh object, ``{"mesh": ...}``, a chat message list (plain or content-parts content)
    -> something score_meshes takes. A string that is not OBJ text is a mesh *path* only with
    ``read_paths=True`` (otherwise a policy could be rewarded for naming a file); meshes from dataset
    columns (``mesh_key``, verl's ``extra_info["mesh_path"]``) are always read."""
    if isinstance(completion, Mapping):
        if completion.get("type") == "text" and "text" in completion:  # one content part
            return default_completion_to_mesh(completion["text"], read_paths=read_paths)
        for key in ("mesh", "mesh_path", "path", "content"):
            if key in completion:  # an explicit mesh_path / path key is a path on purpose
                return default_completion_to_mesh(completion[key],
                                                  read_paths=read_paths or key in ("mesh_path", "path"))
        raise ValueError(f"completion dict has no mesh / mesh_path / path key: {sorted(completion)}")
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], Mapping):
        if "role" in completion[-1] or "content" in completion[-1]:  # chat messages: the last one's content
            return default_completion_to_mesh(completion[-1].get("content", ""), read_paths=read_paths)
        return default_completion_to_mesh(_parts_text(completion), read_paths=read_paths)  # content parts
    if isinstance(completion, str):
        text = completion.strip()
        if "\n" in text and _looks_like_obj(text):
            return obj_text_to_mesh(text)
        if not read_paths:
            raise ValueError("the completion is neither OBJ text nor a mesh object (reading a mesh path named by "
                             "a completion is off: pass read_paths=True to allow it)")
        return text
    if completion is None:
        raise ValueError("the completion is None")
    return completion


def _looks_like_obj(text: str) -> bool:
    lines = [ln.lstrip() for ln in text.splitlines()]
    return any(ln.startswith("v ") for ln in lines) and any(ln.startswith("f ") for ln in lines)


def obj_text_to_mesh(text: str) -> Any:
    """A mesh from OBJ text in a completion (LLaMA-Mesh-style text-to-3D LMs); other lines are ignored."""
    import io

    import trimesh

    from rewardkit.io import MeshLimits, from_trimesh

    limits = MeshLimits.from_env()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()[:2] in ("v ", "f ", "vn", "vt")]
    n_f = sum(ln.startswith("f ") for ln in lines)
    n_v = sum(ln.startswith("v ") for ln in lines)
    if n_f > limits.max_faces or n_v > limits.max_vertices:  # refused before any geometry is built
        raise ValueError(f"the completion's OBJ text has {n_f} faces and {n_v} vertices, more than the limits "
                         f"of {limits.max_faces} faces / {limits.max_vertices} vertices (MeshLimits)")
    mesh = trimesh.load(io.BytesIO("\n".join(lines).encode()), file_type="obj", force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("the completion's OBJ text has no faces")
    from_trimesh(mesh, name="<completion OBJ text>")  # degenerate meshes (one point, absurd or bad indices) fail here
    return mesh


def combine(scores: Mapping[str, float], *, stage: str | None = None,
            weights: Mapping[str, float] | None = None) -> float:
    if stage is not None:
        if stage not in scores:
            raise KeyError(f"no {stage!r} score (have {sorted(scores)})")
        return float(scores[stage])
    if weights is None:
        return float(sum(scores.values()))
    missing = [k for k in weights if k not in scores]
    if missing:
        raise KeyError(f"no score for {missing} (have {sorted(scores)})")
    return float(sum(float(w) * float(scores[k]) for k, w in weights.items()))


def combine_std(stds: Mapping[str, float], *, stage: str | None = None,
                weights: Mapping[str, float] | None = None, names: Sequence[str] | None = None) -> float | None:
    """The std of :func:`combine`'s reward from the scorers' stds (ensembles): the scorer's std with
    ``stage``; else ``sqrt(sum (w * std)^2)`` over ``weights`` (weight 1 for every name in ``names`` when
    no weights are given), treating the scorers' errors as independent. None when a scorer it needs
    reports no std."""
    if stage is not None:
        return float(stds[stage]) if stage in stds else None
    ws = dict(weights) if weights is not None else {k: 1.0 for k in (names if names is not None else stds)}
    if not ws or any(k not in stds for k in ws):
        return None
    return float(sum((float(w) * float(stds[k])) ** 2 for k, w in ws.items()) ** 0.5)


# ---------------------------------------------------------------------------------------------------- #
# TRL
# ---------------------------------------------------------------------------------------------------- #
class TRLRewardFunction:
    """TRL custom reward function: ``reward(prompts, completions, **kwargs) -> list[float | None]``."""

    def __init__(self, scorer: Any = None, *, url: str | None = None, stage: str | None = None,
                 weights: Mapping[str, float] | None = None, mesh_key: str | None = None,
                 completion_to_mesh: Callable[[Any], Any] | None = None, failure_score: float | None = None,
                 name: str | None = None, device: str | None = "auto", read_paths: bool = False,
                 **backend_kw: Any) -> None:
        if stage is not None and weights is not None:
            raise ValueError("give stage or weights, not both")
        self.backend = make_backend(scorer, url=url, device=device, only=needed_scorers(stage, weights), **backend_kw)
        self.stage, self.weights = stage, dict(weights) if weights else None
        self.mesh_key = mesh_key
        self.read_paths = read_paths
        self.completion_to_mesh = completion_to_mesh or (
            lambda c: default_completion_to_mesh(c, read_paths=self.read_paths))
        self.failure_score = failure_score
        self.__name__ = name or f"rewardkit_{stage or 'sum'}"  # TRL logs rewards under the function's __name__
        self.last_std: list[float | None] = []  # the latest call's reward std per sample (ensembles), else None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        texts = [_text_of(p) for p in prompts]
        if self.mesh_key is not None:
            if self.mesh_key not in kwargs:
                raise KeyError(f"mesh_key={self.mesh_key!r} is not among the dataset columns passed to the reward "
                               f"function: {sorted(k for k in kwargs if not k.startswith('log_'))}")
            sources = list(kwargs[self.mesh_key])
        else:
            sources = list(completions)
        if len(sources) != len(texts):
            raise ValueError(f"{len(sources)} meshes for {len(texts)} prompts")
        meshes: list[Any] = []
        errors: list[str | None] = []
        for s in sources:
            try:
                meshes.append(self.completion_to_mesh(s))
                errors.append(None)
            except Exception as exc:
                meshes.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
        ok = [i for i, e in enumerate(errors) if e is None]
        results: list[dict[str, Any]] = [{"scores": {}, "std": {}, "error": e} for e in errors]
        if ok:
            for i, r in zip(ok, self.backend.score([meshes[i] for i in ok], [texts[i] for i in ok])):
                results[i] = r
        self.last_std = [None if r["error"] is not None else
                         combine_std(r.get("std") or {}, stage=self.stage, weights=self.weights,
                                     names=list(r["scores"])) for r in results]
        rewards: list[float | None] = []
        for r in results:
            if r["error"] is not None:
                rewards.append(self.failure_score)
                continue
            try:
                rewards.append(combine(r["scores"], stage=self.stage, weights=self.weights))
            except KeyError:
                rewards.append(self.failure_score)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):  # every column every step, None where a sample failed (TRL's table stays aligned)
            names = sorted(set(self._score_names()) | {k for r in results for k in r["scores"]})
            for n in names:
                log_extra(f"rewardkit/{n}", [r["scores"].get(n) for r in results])
            std_names = sorted(set(self._std_names()) | {k for r in results for k in (r.get("std") or {})})
            for n in std_names:  # an ensemble's spread: rewardkit/<name>_std
                log_extra(f"rewardkit/{n}_std", [(r.get("std") or {}).get(n) for r in results])
        return rewards

    def _std_names(self) -> list[str]:
        try:
            have = list(self.backend.std_names())
        except Exception:  # an unreachable service
            return []
        needed = needed_scorers(self.stage, self.weights)
        return [n for n in have if needed is None or n in needed]

    def _score_names(self) -> list[str]:
        needed = needed_scorers(self.stage, self.weights)
        if needed is not None:
            return needed
        try:
            return list(self.backend.names())
        except Exception:  # an unreachable service: the columns of the samples that did score
            return []


def trl_reward_function(scorer: Any = None, *, url: str | None = None, **kw: Any) -> TRLRewardFunction:
    """A TRL-style reward function over a local scorer (object or directory) or a service ``url``."""
    return TRLRewardFunction(scorer, url=url, **kw)


# ---------------------------------------------------------------------------------------------------- #
# verl
# ---------------------------------------------------------------------------------------------------- #
_BACKENDS: dict[tuple, LocalBackend | RemoteBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def _cached_backend(scorer_dir: str | None, server_url: str | None, device: str | None,
                    only: Sequence[str] | None = None) -> LocalBackend | RemoteBackend:
    scorer_dir = scorer_dir or (None if server_url else os.environ.get("REWARDKIT_SCORER"))
    server_url = server_url or (None if scorer_dir else os.environ.get("REWARDKIT_SCORER_URL"))
    local = Path(scorer_dir).resolve() if scorer_dir and Path(scorer_dir).exists() else None
    key = (str(local) if local else scorer_dir, server_url, device, tuple(only) if only is not None else None)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            if scorer_dir is None and server_url is None:
                raise ValueError("compute_score needs scorer_dir=... or server_url=... (verl: reward_kwargs), or "
                                 "REWARDKIT_SCORER / REWARDKIT_SCORER_URL in the environment")
            _BACKENDS[key] = make_backend(scorer_dir, url=server_url, device=device, only=only)
        return _BACKENDS[key]


def _verl_inputs(solution_str: Any, ground_truth: Any, extra_info: Mapping[str, Any] | None,
                 read_paths: bool = False) -> tuple[Any, str]:
    extra = dict(extra_info or {})
    mesh = (extra.get("mesh_path") or extra.get("mesh")
            or default_completion_to_mesh(solution_str, read_paths=read_paths))
    prompt = extra.get("prompt") or ground_truth
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("no prompt: put it in extra_info['prompt'] or ground_truth")
    return mesh, prompt


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[Any], ground_truths: Sequence[Any],
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None, *,
                        scorer_dir: str | None = None, server_url: str | None = None, stage: str | None = None,
                        weights: Mapping[str, float] | None = None, return_dict: bool = True,
                        failure_score: float = 0.0, device: str | None = "auto", read_paths: bool = False,
                        **_: Any) -> list[Any]:
    """verl batch form: lists in, one result per sample (a dict with ``score`` and the stage scores, or a
    float with ``return_dict=False``). Failures score ``failure_score`` (verl-omni's default 0.0).

    Every dict carries the same keys (verl stacks them per key across the batch): ``score``,
    ``rewardkit_<name>`` for each scorer the reward reads (``failure_score`` where the sample failed),
    ``rewardkit_<name>_std`` for each of those that is an ensemble (its members' std; ``failure_score``
    where the sample failed) and ``rewardkit_failed`` (1.0 / 0.0)."""
    only = needed_scorers(stage, weights)
    backend = _cached_backend(scorer_dir, server_url, device, only)
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    inputs: list[tuple[Any, str] | None] = []
    errors: list[str | None] = []
    for sol, gt, ex in zip(solution_strs, ground_truths, extra_infos):
        try:
            inputs.append(_verl_inputs(sol, gt, ex, read_paths))
            errors.append(None)
        except Exception as exc:
            inputs.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    ok = [i for i, x in enumerate(inputs) if x is not None]
    results: list[dict[str, Any]] = [{"scores": {}, "std": {}, "error": e} for e in errors]
    if ok:
        for i, r in zip(ok, backend.score([inputs[i][0] for i in ok], [inputs[i][1] for i in ok])):  # type: ignore[index]
            results[i] = r
    out: list[Any] = []
    names: list[str] = []
    if return_dict:
        try:
            names = list(only) if only is not None else list(backend.names())
        except Exception:  # an unreachable service: the keys of the samples that did score
            pass
        names = names + sorted({k for r in results for k in r["scores"]} - set(names))
        try:
            std_names = [n for n in backend.std_names() if n in names]
        except Exception:
            std_names = []
        std_names = std_names + sorted({k for r in results for k in (r.get("std") or {})} & set(names) - set(std_names))
    for r in results:
        score = failure_score
        err = r["error"]
        if err is None:
            try:
                score = combine(r["scores"], stage=stage, weights=weights)
            except KeyError as exc:
                err = str(exc)
        if return_dict:
            d: dict[str, Any] = {"score": float(score)}
            d.update({f"rewardkit_{k}": float(r["scores"].get(k, failure_score)) for k in names})
            d.update({f"rewardkit_{k}_std": float((r.get("std") or {}).get(k, failure_score)) for k in std_names})
            d["rewardkit_failed"] = float(err is not None)
            out.append(d)
        else:
            out.append(float(score))
    return out


def compute_score(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> Any:
    """verl custom reward function: ``(data_source, solution_str, ground_truth, extra_info) -> float | dict``.

    Returns a dict ``{"score": float, "rewardkit_global": ..., "rewardkit_local": ...}`` (verl logs the extra
    keys) unless ``return_dict=False``. See the module docstring for the keyword arguments."""
    kwargs.setdefault("return_dict", True)
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def clear_cache() -> None:
    """Drop the cached scorers / clients (tests; switching scorers in one process)."""
    with _BACKENDS_LOCK:
        _BACKENDS.clear()


__all__ = ["LocalBackend", "RemoteBackend", "TRLRewardFunction", "clear_cache", "combine", "compute_score",
           "combine_std", "compute_score_batch", "default_completion_to_mesh", "make_backend", "needed_scorers", "obj_text_to_mesh",
           "trl_reward_function"]
