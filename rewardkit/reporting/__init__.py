"""Reports and plots of finished runs, written from their records (no training code).

- :mod:`rewardkit.reporting.rl_run`       a Hi-GRPO run's report as the pipeline's ``rl`` stages write it: reward
  curve CSV, per-prompt before/after table, plots, the penalised run's comparison
- :mod:`rewardkit.reporting.sample_grid`  the before/after sample grid (step-1 and step-2 meshes per prompt)
"""
