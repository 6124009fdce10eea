"""KD (KID) and FD of rewardkit.eval.generation against implementations nobody here wrote: torchmetrics'
KernelInceptionDistance / FrechetInceptionDistance (fed the features through an identity "extractor")
and clean-fid's kernel_distance / frechet_distance, on fixed feature arrays, with the same random subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardkit.eval.generation.metrics import (
    clip_score,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_fit,
    kernel_distance,
    kernel_distance_subsets,
    mmd2_unbiased,
)


class _Identity(torch.nn.Module):
    """A torchmetrics "feature extractor" that returns its input: the metric then sees our arrays."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _arrays(n_x=300, n_y=260, d=48, shift=0.3, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = np.maximum(rng.normal(size=(n_x, d)) @ mix, 0)  # ReLU-like, correlated: Inception pool features
    y = np.maximum((rng.normal(size=(n_y, d)) + shift) @ mix * 1.1, 0)
    return x, y


def test_fd_matches_torchmetrics_and_clean_fid():
    from cleanfid.fid import frechet_distance as cf_fd
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _arrays()
    fid = FrechetInceptionDistance(feature=_Identity(x.shape[1]))
    fid.update(torch.from_numpy(x), real=True)
    fid.update(torch.from_numpy(y), real=False)
    tm = float(fid.compute())
    ours = frechet_distance(y, x)
    mu1, s1 = gaussian_fit(y)
    mu2, s2 = gaussian_fit(x)
    cf = float(cf_fd(mu1, s1, mu2, s2))
    assert ours > 1.0
    assert ours == pytest.approx(tm, rel=1e-6)
    assert ours == pytest.approx(cf, rel=1e-8)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(cf, rel=1e-8)


def test_fd_small_sets_route_equals_covariance_route():
    # fewer rows than dimensions: rank-deficient covariances; both routes are exact
    x, y = _arrays(n_x=40, n_y=30, d=96)
    mu1, s1 = gaussian_fit(x)
    mu2, s2 = gaussian_fit(y)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance_from_stats(mu1, s1, mu2, s2), rel=1e-7)


def test_fd_of_identical_sets_is_zero():
    x, _ = _arrays(n_x=50, d=2048)  # 50 rows of 2048-d features: singular covariance
    fd = frechet_distance(x, x.copy())
    assert 0.0 <= fd < 1e-9 * np.trace(np.cov(x, rowvar=False))
    mu, s = gaussian_fit(x[:, :256])
    assert frechet_distance_from_stats(mu, s, mu, s) < 1e-6 * np.trace(s)


def test_kd_matches_torchmetrics_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    x, y = _arrays()
    subsets, size = 20, 100
    kid = KernelInceptionDistance(feature=_Identity(x.shape[1]), subsets=subsets, subset_size=size)
    kid.update(torch.from_numpy(x), real=True)
    kid.update(torch.from_numpy(y), real=False)
    torch.manual_seed(123)
    tm_mean, tm_std = (float(v) for v in kid.compute())
    torch.manual_seed(123)  # the same draws, in torchmetrics' order (real, then fake, per subset)
    idx = [(torch.randperm(len(x))[:size].numpy(), torch.randperm(len(y))[:size].numpy()) for _ in range(subsets)]
    vals = kernel_distance_subsets(x, y, idx)
    assert tm_mean > 0
    assert vals.mean() == pytest.approx(tm_mean, rel=1e-9)
    assert vals.std() == pytest.approx(tm_std, rel=1e-7)
    # one subset = everything (equal sizes: torchmetrics' formula assumes them)
    full = float(poly_mmd(torch.from_numpy(x[: len(y)]), torch.from_numpy(y)))
    assert mmd2_unbiased(x[: len(y)], y) == pytest.approx(full, rel=1e-9)


def test_kd_matches_clean_fid():
    from cleanfid.fid import kernel_distance as cf_kd

    x, y = _arrays(n_x=220, n_y=240)
    subsets, size = 15, 90
    np.random.seed(7)
    cf = cf_kd(x, y, num_subsets=subsets, max_subset_size=size)  # feats1 = x, feats2 = y
    np.random.seed(7)  # clean-fid draws the subset of feats2 first, then feats1
    idx = []
    for _ in range(subsets):
        iy = np.random.choice(len(y), size, replace=False)
        ix = np.random.choice(len(x), size, replace=False)
        idx.append((ix, iy))
    assert kernel_distance_subsets(x, y, idx).mean() == pytest.approx(cf, rel=1e-9)


def test_kd_seeded_subsets_and_small_sets():
    x, y = _arrays(n_x=60, n_y=80)
    a = kernel_distance(x, y, subsets=10, subset_size=1000, seed=3)
    assert a.subset_size == 60  # fewer rows than the subset size: all rows of the smaller set
    assert a == kernel_distance(x, y, subsets=10, subset_size=1000, seed=3)
    # identical sets are not independent samples: the estimate is the known -(2/n)(mean k(x,x) - mean
    # k(x,x')) <= 0, a 1/n term (docs/generator-evaluation.md), whatever the subsets
    same = kernel_distance(x, x, subsets=5, subset_size=1000)
    k = (x @ x.T / x.shape[1] + 1) ** 3
    n = len(x)
    expected = -(2 / n) * (np.trace(k) / n - (k.sum() - np.trace(k)) / (n * (n - 1)))
    assert same.mean == pytest.approx(expected, rel=1e-9) and same.mean < 0
    with pytest.raises(ValueError, match="NaN"):
        kernel_distance(np.full((4, 3), np.nan), y[:, :3])


def test_clip_score_is_100_times_mean_cosine_over_views_then_objects():
    img = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # object 0: views cos 1 and 0 -> 0.5; object 1: cos 1 -> mean over objects 0.75
    assert clip_score(img, txt, [0, 0, 1]) == pytest.approx(75.0)
