"""Evaluating a text-to-3D generator as AR3D-R1 reports it (Table 4): KD (KID) and FD over rendered views on
Inception-V3 and DINOv2 features, CLIP score. Modules: :mod:`.inputs` (the prompt set CSV), :mod:`.protocol`
(the config and its provenance), :mod:`.features` (extractors loaded from local weights; :func:`featurize`
through rewardkit's feature cache, :mod:`rewardkit.render.features`), :mod:`.metrics` (the metrics on feature
arrays), :mod:`.plots` (the figure), :mod:`.random_init` (labelled random-init weights for the demo and
tests), :mod:`.runner` (the run: render, featurize, score)."""
