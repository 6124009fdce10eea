"""The root of every exception rewardkit raises on purpose.

Each package has its own root deriving from :class:`RewardkitError` (``except RewardkitError`` catches them
all; ``except <PackageError>`` one concern), and keeps the builtin base it had before (``ValueError``,
``RuntimeError``, ...) so existing ``except`` clauses keep working:

- ``rewardkit.config.ConfigError`` (ValueError): a configuration file, params section or ``--set`` override;
- ``rewardkit.devices.DeviceError`` (ValueError): a device this machine does not have;
- ``rewardkit.io.MeshError``: a mesh that cannot be loaded or used (``rewardkit.io.resources.LimitExceeded``,
  a file over a :class:`~rewardkit.io.MeshLimits` limit, is internal: ``load_mesh`` turns it into a MeshError);
- ``rewardkit.render.RenderError`` (RuntimeError), ``RenderFolderError`` (FileNotFoundError), ``ViewImageError``
  (ValueError): a view image that cannot be read or is over its pixel limit;
  ``rewardkit.render.features.FeatureCacheError`` (ValueError): a feature cache folder that cannot be used;
- ``rewardkit.data.tables.TableError`` (ValueError): a malformed items/pairs/preferences table;
- ``rewardkit.models.backbone.BackboneError`` (RuntimeError);
- ``rewardkit.annotation.AnnotationError`` (RuntimeError): Label Studio server, credentials, API;
- ``rewardkit.scoring.errors.ScoringError`` (RuntimeError): scorer directories (``ScorerError``), the HTTP
  service's request errors (``RequestError``) and its client's (``ScorerServiceError``);
- ``rewardkit.eval.generation.features.FeatureError`` (ValueError): a feature extractor that cannot be built;
  ``rewardkit.eval.generation.inputs.EvalInputError`` (ValueError): an eval-gen prompt set or folder that cannot be used;
- ``rewardkit.demo.annotator.UnrecordedDegradation`` (ValueError): the stand-in annotator's missing metadata;
- ``rewardkit.train.export.ExportError`` (FileNotFoundError): a training run folder that export cannot use;
- ``rewardkit.rl.rewards.RewardError`` (RuntimeError);
- ``rewardkit.train.distributed.RankZeroError`` (RuntimeError): rank 0 of a DDP run failed after training;
- ``rewardkit.engines.ManifestError`` (ValueError): a manifest that cannot be read;
  ``rewardkit.engines.EngineError`` (RuntimeError): a batch engine that cannot run (Ray unreachable, a bad results file).

tests/test_code_quality.py checks that every exception class in rewardkit derives from :class:`RewardkitError`
(the CLI's, which are click exceptions, aside).

The CLI maps the ones that mean a user's mistake to exit code 2 (:mod:`rewardkit.cli.errors`).
"""

from __future__ import annotations


class RewardkitError(Exception):
    """Base class of rewardkit's own exceptions (every package's error root derives from it)."""


__all__ = ["RewardkitError"]
