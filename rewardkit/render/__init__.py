"""Camera protocols, the offscreen renderer, view grids, render folders (the one reader of view images:
``view_files``, ``open_view``, ``load_views``) and the feature cache of rendered views
(:mod:`rewardkit.render.features`)."""

from rewardkit.render.batch import BatchSummary, output_names, render_batch, render_one
from rewardkit.render.folder import (
    RenderFolderError, RenderResult, ViewImageError, is_rendered, load_views, open_view, read_meta, render_to_dir,
    view_files, view_paths, write_views
)
from rewardkit.render.grid import grid_shape, make_grid
from rewardkit.render.protocol import PRESETS, PROTOCOL_VERSION, CameraProtocol, get_protocol, look_at_pose
from rewardkit.render.renderer import MODES, RenderConfig, RenderError, Renderer

__all__ = [
    "BatchSummary", "CameraProtocol", "MODES", "PRESETS", "PROTOCOL_VERSION", "RenderConfig", "RenderError",
    "RenderFolderError", "RenderResult", "Renderer", "ViewImageError", "get_protocol", "grid_shape", "is_rendered",
    "load_views", "look_at_pose", "make_grid", "open_view", "output_names", "read_meta", "render_batch", "render_one",
    "render_to_dir", "view_files", "view_paths", "write_views",
]
