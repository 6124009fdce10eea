"""rewardkit: the reward side of RL for text-to-3D generators.

Subpackages (dependencies point one way: io <- render <- data <- models <- train/scoring <- rl):

- ``rewardkit.io``         mesh loading, validation, normalization
- ``rewardkit.render``     camera protocols, offscreen renderer, grids, render folders
- ``rewardkit.data``       table schemas (items, pairs, preferences), pair sampling, datasets
- ``rewardkit.annotation`` Label Studio server, push, pull, quality control
- ``rewardkit.models``     backbone factory, multi-view fusion, stage reward model, losses
- ``rewardkit.train``      Lightning module and data module
- ``rewardkit.eval``       metrics
- ``rewardkit.scoring``    exported scorers, baselines, HTTP service, RL reward adapters
- ``rewardkit.rl``         policy adapters, 3D tokenizers, Hi-GRPO math and trainer
- ``rewardkit.demo``       procedural demo meshes and a rule-based stand-in annotator
- ``rewardkit.cli``        the ``rewardkit`` command (a thin layer over the above)
"""

__version__ = "0.1.0"
