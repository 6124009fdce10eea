"""``rewardkit annotate``: preference collection through a real Label Studio server.

    rewardkit annotate pairs   items (or render folders + prompts) -> items.parquet, pairs.parquet
    rewardkit annotate up      start Label Studio on 127.0.0.1, create/update the project, register renders
    rewardkit annotate select  the next K pairs where the current scorers are least sure (push those)
    rewardkit annotate hand-over  a finished round's scorers, samples and labelled data to the next round
    rewardkit annotate push    one task per pair not yet imported
    rewardkit annotate status  tasks, done, per annotator
    rewardkit annotate pull    annotations -> preferences.parquet
    rewardkit annotate qc      label distribution, agreement, per-annotator stats, flags
    rewardkit annotate down    stop the server started by `up`

``pairs``, ``select`` and ``hand-over`` need no server: they live in :mod:`rewardkit.cli.annotate_data`.
Server state (url, pid, project id; no secrets) lives in ``--data-dir`` (default ``.labelstudio``);
credentials in environment variables or ``.rewardkit-credentials.json`` (mode 0600, git-ignored).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from rewardkit.cli.annotate_data import hand_over_cmd, pairs_cmd, select_cmd
from rewardkit.cli.errors import CommandGroup, UserError

DATA_DIR = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".labelstudio"), show_default=True,
    help="Label Studio data folder (database, log, server state).",
)
URL = click.option("--url", default=None, help="Server URL (default: LABEL_STUDIO_URL, else the server started by `up`).")
PROJECT = click.option("--project", default=None, help="Project id or title (default: the one `up` created).")
CREDS = click.option(
    "--credentials", type=click.Path(path_type=Path), default=None,
    help="Credentials file (default: $REWARDKIT_LS_CREDENTIALS or ./.rewardkit-credentials.json).",
)


def SERVER(f):  # a decorator, named like the options above
    """--data-dir, --url, --project, --credentials: which Label Studio server and project a command talks to."""
    return DATA_DIR(URL(PROJECT(CREDS(f))))


EXIT_SOME_FAILED = 1  # some inputs failed, the rest were processed (e.g. broken rows in an export)
EXIT_USAGE = 2  # usage, configuration or server error: nothing was done


class AnnotateError(UserError):
    """A one-line error (``rewardkit annotate <cmd>: error: ...`` on stderr) with the exit code of its kind."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(exc: Exception | str, exit_code: int = EXIT_USAGE) -> None:
    raise AnnotateError(str(exc), exit_code)


class _Doing:
    """What a command is doing right now, for the error message (``while <doing>``)."""

    def __init__(self, doing: str = "", url: str | None = None) -> None:
        self.doing, self.url = doing, url


@contextmanager
def _errors(doing: str = "", url: str | None = None):
    """Turn the errors of the annotation layer, of Label Studio's SDK (``ApiError``: HTTP status and the
    server's detail) and of the connection into one-line messages with exit code 2; never a traceback."""
    import httpx

    from rewardkit.annotation import AnnotationError
    from rewardkit.annotation.errors import LabelStudioApiError
    from rewardkit.data import TableError

    step = _Doing(doing, url)
    try:
        yield step
    except click.ClickException:
        raise
    except AnnotationError as exc:
        _fail(exc)
    except httpx.HTTPError as exc:
        where = f" at {step.url}" if step.url else ""
        _fail(f"lost the connection to Label Studio{where}{f' while {step.doing}' if step.doing else ''}: "
              f"{exc.__class__.__name__}{f': {exc}' if str(exc) else ''}")
    except (TableError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    except Exception as exc:  # only the SDK's ApiError is handled here, the rest is re-raised
        api = sys.modules.get("label_studio_sdk.core.api_error")
        if api is not None and isinstance(exc, api.ApiError):
            _fail(LabelStudioApiError.from_sdk(exc, step.doing, step.url))
        raise


def _say(msg: str) -> None:
    """Progress on stderr (stdout keeps the results)."""
    click.echo(msg, err=True)


def _session(url, project, data_dir, credentials):
    from rewardkit.annotation.session import open_session

    with _errors("connecting", url):
        return open_session(url=url, project=project, data_dir=data_dir, credentials=credentials)


def _console():
    from rewardkit.annotation.qc import report_console

    return report_console()


@click.group(cls=CommandGroup)
def annotate() -> None:
    """Collect pairwise preferences in Label Studio (see docs/annotation.md)."""


for _command in (pairs_cmd, select_cmd, hand_over_cmd):  # the server-free commands (rewardkit.cli.annotate_data)
    annotate.add_command(_command)


# -- up -------------------------------------------------------------------------------------------
@annotate.command("up")
@click.option("--renders", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Folder holding the render folders; registered as local-files storage (not copied).")
@click.option("--document-root", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Local-files document root; must contain --renders (default: the parent of --renders).")
@DATA_DIR
@click.option("--port", type=int, default=8080, show_default=True, help="Port on 127.0.0.1 (0, or taken: a free one).")
@click.option("--title", default=None, help="Project title (default: rewardkit).")
@click.option("--label-config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Labeling interface (default: ./annotation/label_config.xml, else the one shipped with rewardkit).")
@click.option("--guidelines", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Annotator guidelines shown as instructions (default: ./annotation/guidelines.md, else the packaged ones).")
@click.option("--annotators-per-task", type=click.IntRange(min=1), default=1, show_default=True,
              help="Overlap: answers wanted per task (Label Studio's maximum_annotations). qc measures agreement only "
                   "on tasks with 2 or more; running `up` again with another value updates the project.")
@click.option("--label-studio-bin", type=click.Path(path_type=Path), default=None, help="label-studio executable (default: .venv-ls).")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for the server.")
@click.option("--url", default=None,
              help="Use this already running Label Studio instead of starting one (its LOCAL_FILES_DOCUMENT_ROOT "
                   "must be --document-root; the token comes from LABEL_STUDIO_API_KEY or the credentials file).")
@click.option("--database", envvar="REWARDKIT_LS_DATABASE", default=None, metavar="URL",
              help="Keep Label Studio's data in PostgreSQL: postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME "
                   "(default: SQLite in --data-dir). Without a password in the URL, $PGPASSWORD is used; prefer the "
                   "environment (REWARDKIT_LS_DATABASE, PGPASSWORD) to keep the password out of `ps`. "
                   "Give it at every `up` that starts the server (docs/annotation.md).")
@CREDS
def up(renders, document_root, data_dir, port, title, label_config, guidelines, annotators_per_task,
       label_studio_bin, timeout, url, database, credentials) -> None:
    """Start Label Studio (127.0.0.1), create or update the project, register the renders folder."""
    from rewardkit.annotation import (
        AnnotationError, ServerConfig, connect, ensure_local_storage, ensure_project,
        load_credentials, read_state, save_credentials,
    )
    from rewardkit.annotation.credentials import credentials_path
    from rewardkit.annotation.project import DEFAULT_TITLE, default_guidelines_path, default_label_config_path
    from rewardkit.annotation.server import check_reachable, find_free_port, start_detached, write_state

    from rewardkit.annotation.database import PostgresDatabase

    renders = renders.resolve()
    document_root = (document_root or renders.parent).resolve()
    title = title or DEFAULT_TITLE
    if database and url:
        raise click.UsageError("--database applies to the server `up` starts; the server at --url keeps its own database")
    with _errors("starting", url) as step:
        db = PostgresDatabase.from_url(database) if database else None
        cpath = credentials_path(credentials)
        state = read_state(data_dir)
        external = url is not None
        if external:
            creds = load_credentials(credentials)
            check_reachable(url)
            if not creds.token:
                raise AnnotationError(f"no API token for {url}: set LABEL_STUDIO_API_KEY or put it in {cpath}")
            state = {"url": url.rstrip("/"), "pid": None, "document_root": str(document_root), "data_dir": str(data_dir)}
            write_state(data_dir, state)
            url = url.rstrip("/")
        else:
            creds = load_credentials(credentials).with_defaults()
        if not external and state and state.get("url"):
            try:
                check_reachable(state["url"], timeout=3)
                url = state["url"]
            except AnnotationError:
                state = None
            if url is not None:
                click.echo(f"Label Studio already running at {url} (data {data_dir}"
                           + (f", database {state['database']}" if state.get("database") else "") + ")")
                if state.get("document_root") and Path(state["document_root"]) != document_root:
                    raise AnnotationError(
                        f"the server at {url} serves local files from {state['document_root']}, not {document_root}; "
                        f"run `rewardkit annotate down --data-dir {data_dir}` first"
                    )
                if db is not None and state.get("database") != db.redacted():
                    raise AnnotationError(
                        f"the server at {url} keeps its data in {state.get('database') or 'SQLite in ' + str(data_dir)}, "
                        f"not {db.redacted()}; run `rewardkit annotate down --data-dir {data_dir}` first"
                    )
        if url is None:
            if port:
                try:
                    import socket

                    with socket.socket() as s:
                        s.bind(("127.0.0.1", port))
                except OSError:
                    click.echo(f"port {port} is taken; using a free port")
                    port = find_free_port()
            cfg = ServerConfig.from_credentials(
                creds, data_dir=data_dir, document_root=document_root, port=port or 0,
                label_studio_bin=label_studio_bin, startup_timeout_s=timeout, database=db,
            )
            click.echo(f"starting Label Studio (data {data_dir}, document root {document_root}"
                       + (f", database {db.redacted()}" if db else "") + ") ...")
            server = start_detached(cfg, progress=_say)
            url = server.url
        step.url = url
        if not external:
            creds.url = url
            save_credentials(creds, cpath)
        step.doing = "connecting"
        _say(f"connecting to {url} (checking the API token)")
        client = connect(url, creds.token)
        xml = (label_config or default_label_config_path()).read_text()
        gpath = guidelines or default_guidelines_path()
        step.doing = f"creating or updating project {title!r}"
        _say(f"creating or updating project {title!r} ({annotators_per_task} annotator(s) per task)")
        info = ensure_project(client, xml, title=title, guidelines=gpath.read_text() if gpath else None,
                              annotators_per_task=annotators_per_task)
        step.doing = f"registering {renders} as local-files storage of project {info.id}"
        _say(f"registering {renders} as the project's local-files storage")
        ensure_local_storage(client, info.id, renders, document_root)
    st = read_state(data_dir) or {}
    st.update({"project_id": info.id, "project_title": title, "renders": str(renders)})
    write_state(data_dir, st)
    click.echo(f"project {title!r} (id {info.id}) {'created' if info.created else 'updated'}; "
               f"{annotators_per_task} annotator(s) per task"
               + ("" if annotators_per_task > 1 else " (qc needs 2 or more to measure agreement: --annotators-per-task 3)"))
    click.echo(f"open {url}/projects/{info.id}/data" + (f"  and log in as {creds.username}" if creds.username else ""))
    if not external:
        click.echo(f"password and API token are in {cpath} (mode 600); annotators can sign up at {url}/user/signup/")


# -- push -----------------------------------------------------------------------------------------
@annotate.command("push")
@click.option("--items", "items_path", type=click.Path(path_type=Path, exists=True), default=Path("data/items.parquet"), show_default=True)
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path, exists=True), default=Path("data/pairs.parquet"), show_default=True)
@click.option("--display", type=click.Choice(["pairs", "random", "swapped"]), default="pairs", show_default=True,
              help="Which item is shown as A: the pairs table's item_a (already randomized), or flip at display time.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--document-root", type=click.Path(path_type=Path), default=None,
              help="Local-files document root (default: the one of the server started by `up`).")
@SERVER
def push(items_path, pairs_path, display, seed, document_root, data_dir, url, project, credentials) -> None:
    """Import a task for every pair that has none yet (running it twice imports nothing twice)."""
    from rewardkit.annotation import build_tasks, push_tasks
    from rewardkit.data import read_items, read_pairs

    s = _session(url, project, data_dir, credentials)
    root = document_root or s.document_root
    if not root:
        _fail("unknown local-files document root: pass --document-root (the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    with _errors(f"importing tasks into project {s.project_id}", s.url):
        tasks = build_tasks(read_pairs(pairs_path), read_items(items_path), root, display=display, seed=seed)
        res = push_tasks(s.client, s.project_id, tasks)
    click.echo(f"imported {res.imported} new task(s); {res.skipped_existing} pair(s) already had a task (project {s.project_id} at {s.url})")


# -- pull -----------------------------------------------------------------------------------------
@annotate.command("pull")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path, exists=True), default=Path("data/pairs.parquet"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/preferences.parquet"), show_default=True)
@click.option("--raw-out", type=click.Path(path_type=Path), default=None, help="Also save the raw Label Studio JSON export here.")
@click.option("--hf-out", type=click.Path(path_type=Path), default=None,
              help="Also save a Hugging Face dataset (save_to_disk) here; needs --items. Grid paths in it are absolute "
                   "(relative render_dir values of the items table are taken from the working directory).")
@click.option("--hf-embed-images", is_flag=True,
              help="With --hf-out: store the grid images themselves (datasets.Image), not their paths, so the dataset "
                   "can be shared (push_to_hub).")
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None)
@click.option("--problems-out", type=click.Path(path_type=Path), default=None,
              help="Write every problem and repair of the conversion here (JSON lines: kind, task, annotation, detail).")
@SERVER
def pull(pairs_path, out, raw_out, hf_out, hf_embed_images, items_path, problems_out, data_dir, url, project, credentials) -> None:
    """Export the annotations into the preferences table.

    Skipped (cancelled) answers are counted; broken tasks or answers give no row and are listed with their
    task id (exit code 1; the good rows are written)."""
    from rewardkit.annotation import pull as do_pull
    from rewardkit.data import read_items, read_pairs, save_hf_dataset, write_table

    if hf_embed_images and not hf_out:
        raise click.UsageError("--hf-embed-images needs --hf-out")
    if hf_out and not items_path:
        raise click.UsageError("--hf-out needs --items")
    with _errors("reading the tables"):
        pairs = read_pairs(pairs_path)
        items = read_items(items_path) if hf_out else None
    s = _session(url, project, data_dir, credentials)
    with _errors(f"exporting project {s.project_id}", s.url):
        result, raw = do_pull(s.client, s.project_id, pairs)
    write_table(result.preferences, out, "preferences")
    if raw_out:
        Path(raw_out).parent.mkdir(parents=True, exist_ok=True)
        Path(raw_out).write_text(json.dumps(raw, indent=1))
    click.echo(f"{result.summary()} -> {out}")
    if result.skipped:
        click.echo("skipped: " + ", ".join(f"{k}={v}" for k, v in result.skipped.items()))
    if result.warnings:
        click.echo("repaired (row kept): " + ", ".join(f"{k}={v}" for k, v in sorted(_kinds(result.warnings).items())))
    if problems_out:
        Path(problems_out).parent.mkdir(parents=True, exist_ok=True)
        with open(problems_out, "w") as f:
            for p in result.problems + result.warnings:
                f.write(json.dumps({"kind": p.kind, "task": p.task, "annotation": p.annotation, "detail": p.detail,
                                    "row_kept": p in result.warnings}, default=str) + "\n")
    shown = result.problems[:20] + result.warnings[: max(0, 20 - len(result.problems))]
    for p in shown:
        _say(f"  {p}")
    more = len(result.problems) + len(result.warnings) - len(shown)
    if more > 0:
        _say(f"  ... and {more} more" + (f" (all in {problems_out})" if problems_out else " (--problems-out FILE lists them all)"))
    if hf_out:
        with _errors("writing the Hugging Face dataset"):
            save_hf_dataset(result.preferences, pairs, items, hf_out, embed_images=hf_embed_images)
        click.echo(f"Hugging Face dataset -> {hf_out}" + (" (images embedded)" if hf_embed_images else " (grid image paths)"))
    if result.problems:
        _say(f"{len(result.problems)} broken task(s) or answer(s) gave no row (listed above); the other rows were written")
        sys.exit(EXIT_SOME_FAILED)


def _kinds(problems) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(p.kind for p in problems))


# -- status ---------------------------------------------------------------------------------------
@annotate.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@SERVER
def status(as_json, data_dir, url, project, credentials) -> None:
    """Progress: tasks answered / skipped / left, annotations answered / skipped, per annotator."""
    from rewardkit.annotation import export_tasks, progress, user_map
    from rewardkit.annotation.status import progress_line

    s = _session(url, project, data_dir, credentials)
    with _errors(f"exporting project {s.project_id}", s.url):
        prog = progress(export_tasks(s.client, s.project_id), user_map(s.client), annotators_per_task=s.annotators_per_task)
    prog = {"url": s.url, "project_id": s.project_id, **prog}
    if as_json:
        click.echo(json.dumps(prog, indent=2))
        return
    from rich.table import Table

    con = _console()
    con.print(f"{s.url}  project {s.project_id}: {progress_line(prog)}", markup=False, highlight=False)
    t = Table(title="per annotator")
    t.add_column("annotator")
    t.add_column("answered", justify="right")
    t.add_column("skipped", justify="right")
    from rich.markup import escape

    for who, c in prog["per_annotator"].items():
        t.add_row(escape(who), str(c["answered"]), str(c["skipped"]))
    con.print(t)


# -- qc -------------------------------------------------------------------------------------------
@annotate.command("qc")
@click.option("--preferences", "prefs_path", type=click.Path(path_type=Path, exists=True), default=Path("data/preferences.parquet"), show_default=True)
@click.option("--threshold", type=float, default=0.6, show_default=True, help="Flag annotators agreeing with the majority less often.")
@click.option("--min-overlap", type=int, default=5, show_default=True, help="Shared units needed before flagging.")
@click.option("--min-lead-time", type=float, default=None, help="Also flag annotators with a smaller median lead time (s).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report as JSON here.")
def qc(prefs_path, threshold, min_overlap, min_lead_time, json_out) -> None:
    """Quality control: label distribution, inter-annotator agreement, per-annotator stats, flags."""
    from rewardkit.annotation import print_report, qc_report, write_report
    from rewardkit.data import read_preferences

    with _errors("reading the preferences"):
        prefs = read_preferences(prefs_path)
    report = qc_report(prefs, threshold=threshold, min_overlap=min_overlap, min_lead_time_s=min_lead_time)
    print_report(report, _console())
    if json_out:
        write_report(report, json_out)
        click.echo(f"report -> {json_out}")


# -- down -----------------------------------------------------------------------------------------
@annotate.command("down")
@DATA_DIR
def down(data_dir) -> None:
    """Stop the server started by `up` in --data-dir (its data stays)."""
    from rewardkit.annotation import stop_from_state

    if stop_from_state(data_dir):
        click.echo(f"Label Studio stopped (data kept in {data_dir})")
    else:
        click.echo(f"no running server recorded in {data_dir}")


if __name__ == "__main__":  # pragma: no cover
    annotate(sys.argv[1:])
