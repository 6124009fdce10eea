"""The DVC stage layer: one thin module per stage of dvc.yaml.

Each module reads its section of ``params.yaml`` and calls the library; none of them holds logic the
library lacks. Run one by hand with ``python -m pipelines.<stage>`` from the repository root.
"""
