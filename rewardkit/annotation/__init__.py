"""Label Studio: server process, project and storage, pushing tasks, pulling preferences, QC.

Heavy imports (``label_studio_sdk``) happen inside the functions that need them.
"""

from rewardkit.annotation.credentials import Credentials, load_credentials, save_credentials
from rewardkit.annotation.errors import (
    AnnotationError,
    AuthError,
    LabelStudioApiError,
    MissingRenderFiles,
    ServerStartError,
    ServerUnreachable,
)
from rewardkit.annotation.project import (
    DEFAULT_TITLE,
    connect,
    default_label_config_path,
    ensure_local_storage,
    ensure_project,
    find_project,
    local_files_url,
)
from rewardkit.annotation.pull import Problem, PullResult, convert_export, export_tasks, pull, user_map
from rewardkit.annotation.push import PushResult, build_tasks, existing_pair_ids, push_tasks
from rewardkit.annotation.qc import print_report, qc_report, write_report
from rewardkit.annotation.server import (
    LabelStudioServer,
    ServerConfig,
    check_reachable,
    find_free_port,
    read_state,
    start_detached,
    stop_from_state,
)
from rewardkit.annotation.session import Session, open_session, pull_preferences
from rewardkit.annotation.status import progress, progress_line

__all__ = [
    "AnnotationError", "AuthError", "Credentials", "DEFAULT_TITLE", "LabelStudioApiError", "LabelStudioServer",
    "MissingRenderFiles", "Problem", "PullResult", "PushResult", "ServerConfig", "ServerStartError", "ServerUnreachable", "build_tasks",
    "check_reachable", "connect", "convert_export", "default_label_config_path", "ensure_local_storage",
    "ensure_project", "existing_pair_ids", "export_tasks", "find_free_port", "find_project", "load_credentials",
    "local_files_url", "print_report", "progress", "progress_line", "pull", "push_tasks", "qc_report", "read_state",
    "save_credentials", "Session", "open_session", "pull_preferences", "start_detached", "stop_from_state", "user_map", "write_report",
]
