"""Evaluating a text-to-3D generator as AR3D-R1 reports it (Table 4): KD (KID) and FD over rendered views on
Inception-V3 and DINOv2 features, CLIP score. Modules: :mod:`.metrics` (the metrics on feature arrays),
:mod:`.features` (extractors loaded from local weights)."""
