"""Procedural demo data: prompted objects with controlled degradations, and a rule-based stand-in annotator.

- :mod:`rewardkit.demo.objects`   categories built from trimesh primitives, prompts, texture atlases
- :mod:`rewardkit.demo.textures`  procedural colours and patterns
- :mod:`rewardkit.demo.degrade`   geometry and texture degradations
- :mod:`rewardkit.demo.real`      real meshes from installed packages (YCB scans) as training objects
- :mod:`rewardkit.demo.generate`  the data set on disk (GLB meshes, items + candidates tables)
- :mod:`rewardkit.demo.annotator` synthetic preferences from the recorded degradations
- :mod:`rewardkit.demo.shapes`    procedural occupancy shapes: the Hi-GRPO demo's warm-start set and reward targets

Nothing here is downloaded: every mesh and texel comes from code and a seed, or (real meshes) from a
package that setup installed.
"""

from rewardkit.demo.annotator import UnrecordedDegradation, label_pairs, probe_pairs, rule_label
from rewardkit.demo.degrade import DEGRADATIONS, GEOMETRY, TEXTURE, kind_of
from rewardkit.demo.generate import CANDIDATES_SCHEMA, DemoConfig, generate, make_candidate, read_candidates
from rewardkit.demo.objects import CATEGORIES, ObjectSpec, sample_spec
from rewardkit.demo.real import RealConfig

__all__ = [
    "CANDIDATES_SCHEMA", "CATEGORIES", "DEGRADATIONS", "DemoConfig", "GEOMETRY", "ObjectSpec", "RealConfig", "TEXTURE",
    "generate", "kind_of", "label_pairs", "make_candidate", "probe_pairs", "read_candidates", "rule_label", "sample_spec",
    "UnrecordedDegradation",
]
