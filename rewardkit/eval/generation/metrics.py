"""The set-level metrics of AR3D-R1's Table 4, on feature arrays (one row per rendered view).

- :func:`kernel_distance` (KD, Bińkowski et al. 2018's KID): the unbiased estimate of the squared MMD with
  the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over ``subsets`` random subsets of
  ``subset_size`` rows drawn without replacement from each set (the convention of the original code,
  torch-fidelity, torchmetrics and clean-fid); the paper reports it ×100 (:data:`KD_SCALE`). With fewer
  rows than ``subset_size`` the subsets take all rows of the smaller set (clean-fid's rule).
- :func:`frechet_distance` (FD): ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½ between Gaussian fits
  (sample covariance, n − 1). The trace of the matrix square root is computed without forming an
  unsymmetric square root: from the singular values of X₂X₁ᵀ when the sets are small (exact for the
  rank-deficient covariances of fewer rows than dimensions), else from the eigenvalues of the symmetric
  Σ₁^½ Σ₂ Σ₁^½, negative round-off clipped. So identical sets give 0 up to rounding, never NaN.
- :func:`clip_score`: 100 × the mean cosine between each view's image embedding and its prompt's text
  embedding, averaged over the views of an object, then over objects.
- :func:`set_metrics`: all of them between the renders of a set of objects and their references, as
  ``result.json`` records them.

Everything is float64 numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

KD_SCALE = 100.0
"""AR3D-R1 (and ShapeLLM-Omni) report KD ×100."""


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [n, d] feature array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return a


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma · xᵀy + coef)^degree with gamma = 1/d by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(x, y, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """The unbiased MMD² estimate between two feature sets (Gretton et al.'s MMD²_u, Bińkowski's KID on one
    subset): mean off-diagonal k(x, x') + mean off-diagonal k(y, y') − 2 mean k(x, y)."""
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("the unbiased MMD needs at least 2 rows in each set")
    kxx = polynomial_kernel(x, x, degree, gamma, coef)
    kyy = polynomial_kernel(y, y, degree, gamma, coef)
    kxy = polynomial_kernel(x, y, degree, gamma, coef)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


@dataclass
class KernelDistance:
    """A KD estimate: mean and (population) std over subsets, unscaled; ``scaled`` multiplies by 100."""

    mean: float
    std: float
    subsets: int
    subset_size: int
    n_x: int
    n_y: int

    def scaled(self, factor: float = KD_SCALE) -> tuple[float, float]:
        return self.mean * factor, self.std * factor

    def to_dict(self) -> dict:
        return asdict(self)


def subset_indices(n_x: int, n_y: int, subsets: int, subset_size: int, seed: int = 0
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The row indices of each KD subset: ``subset_size`` rows of each set without replacement, seeded."""
    rng = np.random.default_rng(seed)
    return [(rng.choice(n_x, subset_size, replace=False), rng.choice(n_y, subset_size, replace=False))
            for _ in range(subsets)]


def kernel_distance_subsets(x, y, indices: Iterable[tuple[Sequence[int], Sequence[int]]], degree: int = 3,
                            gamma: float | None = None, coef: float = 1.0) -> np.ndarray:
    """MMD²_u of each given subset pair (rows ``ix`` of ``x``, ``iy`` of ``y``)."""
    x, y = _features(x, "x"), _features(y, "y")
    return np.array([mmd2_unbiased(x[np.asarray(ix)], y[np.asarray(iy)], degree, gamma, coef) for ix, iy in indices])


def kernel_distance(x, y, subsets: int = 100, subset_size: int = 1000, seed: int = 0, degree: int = 3,
                    gamma: float | None = None, coef: float = 1.0) -> KernelDistance:
    """KD (KID) between feature sets ``x`` and ``y`` (see the module docstring), unscaled."""
    x, y = _features(x, "x"), _features(y, "y")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    m = min(len(x), len(y), subset_size)
    if m < 2:
        raise ValueError(f"KD needs at least 2 rows in each set, got {len(x)} and {len(y)}")
    vals = kernel_distance_subsets(x, y, subset_indices(len(x), len(y), subsets, m, seed), degree, gamma, coef)
    return KernelDistance(float(vals.mean()), float(vals.std()), subsets, m, len(x), len(y))


def gaussian_fit(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (n − 1) of a feature set."""
    x = _features(x, "x")
    if len(x) < 2:
        raise ValueError("a Gaussian fit needs at least 2 rows")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ for covariance matrices, via the symmetric Σ₁^½ Σ₂ Σ₁^½ (eigenvalues clipped at 0)."""
    r = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    m = r @ np.asarray(sigma2, dtype=np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fd, 0.0))


def frechet_distance(x, y) -> float:
    """FD between Gaussian fits of feature sets ``x`` and ``y`` (see the module docstring)."""
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("FD needs at least 2 rows in each set")
    n1, n2, d = len(x), len(y), x.shape[1]
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    if min(n1, n2) ** 2 * max(n1, n2) <= 2 * d**3:  # small sets: the n1 x n2 route is exact and cheaper
        xc, yc = x - mu1, y - mu2
        tr_sqrt = float(np.linalg.svd(yc @ xc.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
        tr1 = float((xc * xc).sum()) / (n1 - 1)
        tr2 = float((yc * yc).sum()) / (n2 - 1)
        diff = mu1 - mu2
        return float(max(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt, 0.0))
    return frechet_distance_from_stats(mu1, np.cov(x, rowvar=False), mu2, np.cov(y, rowvar=False))


def clip_score(image_embeddings, text_embeddings, object_index: Sequence[int]) -> float:
    """100 × mean over objects of the mean over an object's views of cos(image, text).

    ``image_embeddings`` [n_views_total, d] (one row per view), ``text_embeddings`` [n_views_total, d]
    (the prompt of each view's object), ``object_index`` the object of each row.
    """
    img = _features(image_embeddings, "image embeddings")
    txt = _features(text_embeddings, "text embeddings")
    if img.shape != txt.shape or len(object_index) != len(img):
        raise ValueError(f"shapes differ: images {img.shape}, texts {txt.shape}, {len(object_index)} object ids")
    img = img / np.linalg.norm(img, axis=1, keepdims=True).clip(1e-12)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True).clip(1e-12)
    cos = (img * txt).sum(axis=1)
    obj = np.asarray(object_index)
    per_object = [cos[obj == o].mean() for o in np.unique(obj)]
    return float(100.0 * np.mean(per_object))


def set_metrics(gen: dict[str, dict[str, np.ndarray]], ref: dict[str, dict[str, np.ndarray]], objects: Sequence[str],
                refs: Sequence[str], text: dict[str, np.ndarray] | None, kd: Any) -> dict[str, Any]:
    """The metrics between the views of ``objects`` (generated) and ``refs`` (their references):
    ``gen`` / ``ref`` map an extractor (``inception``, ``dinov2``, ``clip``) to each render's features,
    ``text`` each object's prompt embedding (CLIP), ``kd`` the KD subsets (``subsets``, ``subset_size``,
    ``seed``: an :class:`~rewardkit.eval.generation.protocol.KDConfig`)."""
    out: dict[str, Any] = {"objects": len(objects), "references": len(refs)}
    for k in ("inception", "dinov2"):
        if k not in gen:
            continue
        x = np.concatenate([gen[k][o] for o in objects]).astype(np.float64)
        y = np.concatenate([ref[k][r] for r in refs]).astype(np.float64)
        out["generated_views"], out["reference_views"] = len(x), len(y)
        short = "incep" if k == "inception" else "dinov2"
        if min(len(x), len(y)) < 2:
            out[f"kd_{short}_x100"] = out[f"kd_{short}_x100_std"] = out[f"fd_{short}"] = None
            continue
        d = kernel_distance(x, y, kd.subsets, kd.subset_size, kd.seed)
        out[f"kd_{short}_x100"], out[f"kd_{short}_x100_std"] = d.scaled()
        out[f"kd_{short}_subset_size"] = d.subset_size
        out[f"fd_{short}"] = frechet_distance(x, y)
    if "clip" in gen and text is not None:
        img = np.concatenate([gen["clip"][o] for o in objects]).astype(np.float64)
        txt = np.concatenate([np.repeat(text[o][None], len(gen["clip"][o]), axis=0) for o in objects])
        idx = np.concatenate([np.full(len(gen["clip"][o]), i) for i, o in enumerate(objects)])
        out["clip_score"] = clip_score(img, txt, idx)
    return out


def identical_sets_kd(features: np.ndarray, degree: int = 3) -> float:
    """KD (unscaled, whole sets) of a set against itself: MMD²_u(X, X) = −(2/n)(mean k(x,x) − mean k(x,x′)) —
    small but not 0 (the unbiased estimate drops the diagonal from k(X,X) but not from k(X,Y))."""
    x = np.asarray(features, np.float64)
    k = polynomial_kernel(x, x, degree)
    n = len(x)
    diag = float(np.trace(k)) / n
    off = float(k.sum() - np.trace(k)) / (n * (n - 1))
    return -2.0 / n * (diag - off)


__all__ = [
    "KD_SCALE", "KernelDistance", "clip_score", "frechet_distance", "frechet_distance_from_stats", "gaussian_fit",
    "identical_sets_kd", "kernel_distance", "kernel_distance_subsets", "mmd2_unbiased", "polynomial_kernel",
    "set_metrics", "subset_indices", "trace_sqrt_product",
]
