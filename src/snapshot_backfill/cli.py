"""The command line: parse, call the library, print, and map errors to exit codes.

Exit codes: 0 done; 1 verification failed or some runs errored; 2 usage or bad input
(nothing changed); 3 another migrator holds the lock; 130 interrupted (committed batches
are kept and a summary is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TextIO

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from . import __version__, backfill
from .backup import backup_sqlite, sibling_mode, write_text_file
from .database import (
    ENV_VAR,
    check_connection,
    describe_db_error,
    display_url,
    is_sqlite,
    open_engine,
    require_writable,
    resolve_url,
    sqlite_path,
)
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BackfillError,
    BadInputError,
    InterruptedRunError,
)
from .interrupts import Interrupts
from .locking import DEFAULT_LOCK_TIMEOUT_S, MAX_LOCK_TIMEOUT_S
from .models import pre_snapshot_metadata
from .pacing import (
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_MIN_AGE_S,
    SQLITE_DEFAULT_PAUSE_S,
    SQLITE_LONGEST_BUSY_SLEEP_S,
    default_pause,
)

DEMO_DATABASE_NAME = "bake_tracker_demo.sqlite"
_DEMO_SIDE_FILES = ("-journal", "-wal", "-shm", ".snapshot-backfill.lock")
MIN_SQLITE_BUSY_TIMEOUT_S = 5.0
WRITING_COMMANDS = ("run", "rollback", "upgrade-schema")
INTERRUPTS = Interrupts()


class Output:
    """The one writer every command prints through (tests capture it)."""

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        *,
        quiet: bool = False,
        as_json: bool = False,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.quiet = quiet
        self.as_json = as_json

    def say(self, text: str = "") -> None:
        """Print a line for a human (not with --quiet, and on stderr with --json)."""
        if self.quiet:
            return
        print(text, file=self.stderr if self.as_json else self.stdout)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.stderr)

    def json(self, payload: dict[str, Any]) -> None:
        print(json.dumps(payload, indent=2, default=str), file=self.stdout)


# --- argument parsing ---------------------------------------------------------------------


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    if number > backfill.MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {backfill.MAX_BATCH_SIZE}: {value}"
        )
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    # NaN compares false with everything, so the range check alone would let it through.
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds: {value}")
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    if number > MAX_LOCK_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LOCK_TIMEOUT_S:g}: {value}")
    return number


def _positive_seconds(value: str) -> float:
    number = _seconds(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {value}")
    return number


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 through our error path (one line, no usage dump to stdout)."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(f"{self.prog}: {message}")


_EPILOG = f"""\
The database URL may also come from {ENV_VAR};
a bare path means a SQLite file. With neither, the application's default database is used
(BAKING_TRACKER_ENV, see the README).

exit codes:
  0    done (verify: no problem; plan --check: nothing to write or link)
  1    verify found problems, plan --check found work, or some runs could not be linked
  2    usage or bad input: nothing was changed
  3    another migrator holds the lock (--lock-timeout)
  130  interrupted: committed batches are kept, a summary is printed; run again to finish

example:
  snapshot-backfill plan --database-url ~/bake_tracker.db
  snapshot-backfill run  --database-url ~/bake_tracker.db
  pg_dump -Fc -f bakery.dump bakery && \\
    snapshot-backfill run --database-url postgresql://baker@db/bakery --backup-taken
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the ``snapshot-backfill`` argument parser."""
    parser = _Parser(
        prog="snapshot-backfill",
        description="Backfill recipe snapshots for bake-tracker production runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def debug_option(sub: argparse.ArgumentParser) -> None:
        # Accepted after the command too; SUPPRESS keeps the top level's value when absent.
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )

    def database_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        debug_option(sub)
        sub.add_argument(
            "--database-url", help=f"database URL or SQLite path (default: ${ENV_VAR})"
        )
        sub.add_argument("--json", action="store_true", help="print the result as one JSON object")
        sub.add_argument("--quiet", action="store_true", help="print nothing but errors")
        sub.add_argument(
            "--lock-timeout",
            type=_seconds,
            default=DEFAULT_LOCK_TIMEOUT_S,
            metavar="SECONDS",
            help="how long to wait for another migrator (default: %(default)s)",
        )
        return sub

    def writing_options(sub: argparse.ArgumentParser, *, batched: bool = True) -> None:
        sub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if batched:
            sub.add_argument(
                "--batch-size",
                type=_positive_int,
                default=backfill.DEFAULT_BATCH_SIZE,
                help="runs per committed transaction (default: %(default)s)",
            )
            sub.add_argument(
                "--pause",
                type=_seconds,
                metavar="SECONDS",
                help="sleep between batches, leaving the database to the application (default: "
                f"{SQLITE_DEFAULT_PAUSE_S:g} on SQLite, whose waiting connections retry only "
                f"every {SQLITE_LONGEST_BUSY_SLEEP_S * 1000:.0f} ms; 0 on a server, which "
                "hands a waiter the lock at once)",
            )
        backup = sub.add_mutually_exclusive_group()
        backup.add_argument(
            "--backup", type=Path, metavar="PATH", help="SQLite: where to write the backup"
        )
        backup.add_argument(
            "--no-backup",
            action="store_true",
            help="skip the backup before writing (on a server: write without one, knowingly)",
        )
        backup.add_argument(
            "--backup-taken",
            action="store_true",
            help="PostgreSQL/MariaDB: you took the pg_dump/mysqldump shown; required (or "
            "--no-backup) to write to a server, which --yes does not imply",
        )

    plan_parser = database_command("plan", "show what a run would do (read-only, changes nothing)")
    all_recipes_help = (
        f"list every recipe in the per-recipe table (default: the {PER_RECIPE_SHOWN} with most "
        "to do)"
    )
    plan_parser.add_argument("--all-recipes", action="store_true", help=all_recipes_help)
    plan_parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any run would be written or linked, 0 otherwise (a gate for CI)",
    )
    run_parser = database_command("run", "backfill snapshots, one committed batch at a time")
    writing_options(run_parser)
    run_parser.add_argument("--report", type=Path, metavar="FILE", help="write the report as JSON")
    run_parser.add_argument("--all-recipes", action="store_true", help=all_recipes_help)
    run_parser.add_argument(
        "--max-batch-seconds",
        type=_seconds,
        default=DEFAULT_MAX_BATCH_SECONDS,
        metavar="SECONDS",
        help="target duration of one batch's write transaction: the batch size adapts between "
        "batches to stay under it (0: keep --batch-size fixed; default: %(default)s)",
    )
    run_parser.add_argument(
        "--min-age",
        type=_seconds,
        default=DEFAULT_MIN_AGE_S,
        metavar="SECONDS",
        help="leave runs created less than this long ago to the application (default: %(default)s)",
    )
    database_command("verify", "check every run and snapshot; exit 1 on any problem")
    writing_options(database_command("rollback", "undo what this tool's runs did"))
    upgrade = database_command(
        "upgrade-schema", "add the tables and columns of the snapshot feature to an old database"
    )
    writing_options(upgrade, batched=False)
    upgrade.add_argument(
        "--dry-run", action="store_true", help="print the SQL it would run; change nothing"
    )

    rehearse = database_command(
        "rehearse",
        "prove the backfill on a scratch copy of the database (the database is only read)",
    )
    rehearse.add_argument(
        "--scratch-url",
        metavar="URL",
        help="PostgreSQL/MariaDB: an empty database to copy into (default: a new database on "
        "the same server, dropped afterwards)",
    )
    rehearse.add_argument(
        "--batch-size",
        type=_positive_int,
        default=backfill.DEFAULT_BATCH_SIZE,
        help="runs per committed transaction to rehearse with (default: %(default)s)",
    )
    rehearse.add_argument(
        "--max-batch-seconds",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="longest batch (write lock) acceptable; above it a batch size is recommended "
        "(default: %(default)s)",
    )
    rehearse.add_argument(
        "--report", type=Path, metavar="FILE.md", help="write a Markdown summary to FILE.md"
    )

    load_help = "create a database from a sample data file"
    load = commands.add_parser(
        "load-sample",
        help=load_help,
        description=f"{load_help.capitalize()} (the bundled one by default): a new SQLite "
        "file, or an empty database; a database with any table is refused (exit 2).",
    )
    debug_option(load)
    load.add_argument("--database-url", help=f"database URL or SQLite path (default: ${ENV_VAR})")
    load.add_argument("--sample", type=Path, help="sample file (default: the bundled sample)")

    demo_help = "build a SQLite database from the sample data, then plan, run and verify"
    demo = commands.add_parser(
        "demo",
        help=demo_help,
        description=f"{demo_help[0].upper()}{demo_help[1:]}: the whole job on a new file, "
        "run twice to show the second changes nothing. It never overwrites a file.",
    )
    debug_option(demo)
    demo.add_argument("--path", type=Path, help="directory for the demo database (default: temp)")
    demo.add_argument(
        "--from-old-schema",
        action="store_true",
        help="start from a database of before the snapshot feature: upgrade-schema first",
    )
    return parser


# --- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Engine]:
    """The command's database, checked reachable; its connections are closed afterwards."""
    # SQLite waits for another program's lock as long as we would wait for another migrator,
    # and never less than the application's own 5 s: its transactions (and a second
    # migrator's read-only plan) hold the file for moments that must not fail a batch.
    busy_timeout = max(args.lock_timeout, MIN_SQLITE_BUSY_TIMEOUT_S)
    engine = open_engine(resolve_url(args.database_url), busy_timeout=busy_timeout)
    try:
        check_connection(engine)
        yield engine
    finally:
        engine.dispose()


def _before_writing(
    out: Output, engine: Engine, args: argparse.Namespace, stdin: TextIO, question: str
) -> None:
    """Refuse a read-only database, say how to back up a server, ask, then back up SQLite."""
    require_writable(engine)
    _require_server_backup(out, engine, args)
    _confirm(out, question, args.yes, stdin)
    _protect(out, engine, args)


def _require_server_backup(out: Output, engine: Engine, args: argparse.Namespace) -> None:
    """On a server, show the dump to take before the question; refuse to write unacknowledged.

    A SQLite file is copied by the tool itself; a server's dump is the user's to take, and
    ``--yes`` (added to skip a prompt in a script) is no word that it was: ``--backup-taken``
    says it was, ``--no-backup`` that the user writes without one knowingly.
    """
    if is_sqlite(engine.url):
        return
    dump = _dump_command(engine.url)
    if args.backup_taken or args.no_backup:
        out.say("Back up the database before writing, if you have not, e.g.:")
        out.say(f"  {dump}")
        return
    raise BadInputError(
        f"{display_url(engine.url)} is a server database: take a backup first, e.g. `{dump}`, "
        "then pass --backup-taken (or --no-backup to write without one); nothing was changed"
    )


def _confirm(out: Output, question: str, assume_yes: bool, stdin: TextIO) -> None:
    if assume_yes:
        return
    if not stdin.isatty():
        raise BadInputError(
            "refusing to write without confirmation: no terminal to ask; pass --yes"
        )
    print(f"{question} [y/N] ", end="", file=out.stderr, flush=True)
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise BadInputError("aborted: nothing was changed")


def _protect(out: Output, engine: Engine, args: argparse.Namespace) -> None:
    """Back up a SQLite file before writing (a server's dump was asked for before the question)."""
    url = engine.url
    if is_sqlite(url):
        database = sqlite_path(url)
        if database is None or args.no_backup:
            return
        out.say(f"Backup: {backup_sqlite(database, args.backup)}")


def _dump_command(url: URL) -> str:
    host = f" -h {url.host}" if url.host else ""
    port = f" -P {url.port}" if url.port else ""
    user = url.username or ""
    if url.get_backend_name() == "postgresql":
        port = f" -p {url.port}" if url.port else ""
        user_flag = f" -U {user}" if user else ""
        return f"pg_dump -Fc{host}{port}{user_flag} -f {url.database}.dump {url.database}"
    user_flag = f" -u {user}" if user else ""
    return (
        f"mysqldump --single-transaction{host}{port}{user_flag} {url.database} > {url.database}.sql"
    )


def progress_line(progress: backfill.Progress, unit: str) -> str:
    """``done/total unit (batches, rate, ETA)``, the rate measured from the first batch on."""
    text = f"{progress.done:,}/{progress.total:,} {unit} ({progress.batches:,} batches"
    if progress.elapsed_s > 0 and progress.done:
        rate = progress.done / progress.elapsed_s
        left = max(progress.total - progress.done, 0)
        text += f", {rate:,.0f} {unit}/s, ETA {_duration(left / rate)}"
    return text + ")"


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class _ProgressPrinter:
    """A progress bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, out: Output, unit: str, stream: TextIO) -> None:
        self.out = out
        self.unit = unit
        self.stream = stream
        self.bar: Any = None
        self.last_line = 0.0

    def __call__(self, progress: backfill.Progress) -> None:
        INTERRUPTS.check()  # between batches: where an interruption lost in a finalizer stops
        if self.out.quiet:
            return
        if self.stream.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=progress.total, unit=self.unit, file=self.stream)
            self.bar.update(progress.done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line >= 2.0 or progress.done >= progress.total:
            self.last_line = now
            print(f"  {progress_line(progress, self.unit)}", file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- printing reports ---------------------------------------------------------------------


def _ids(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


# The confirmation screen must fit a terminal of 40 rows with the totals and the question at
# the bottom: the per-recipe table shows the recipes with the most work (--all-recipes: all).
PER_RECIPE_SHOWN = 10


def _id_lines(label: str, ids: Sequence[int]) -> list[str]:
    """``label: 1, 2, 3`` wrapped to the terminal between ids, never inside a number."""
    width = max(shutil.get_terminal_size((100, 40)).columns - 1, 40)
    return textwrap.wrap(
        f"{label}: {_ids(ids)}",
        width=width,
        initial_indent="  ",
        subsequent_indent="      ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _print_plan(
    out: Output, the_plan: backfill.Plan, database: str, *, all_recipes: bool = False
) -> None:
    """The plan, the details first and the totals last (next to a question that may follow)."""
    out.say(f"Database: {database}")
    if the_plan.per_recipe:
        rows = list(the_plan.per_recipe)
        if not all_recipes and len(rows) > PER_RECIPE_SHOWN:
            # The recipes with the most runs to write, link or skip (orphans), in id order.
            busiest = sorted(
                rows,
                key=lambda r: (-(r.to_migrate + r.to_link_existing + r.orphaned), r.recipe_id),
            )
            rows = sorted(busiest[:PER_RECIPE_SHOWN], key=lambda r: r.recipe_id)
        shown = (
            "" if len(rows) == len(the_plan.per_recipe) else f" (the {len(rows)} with most runs)"
        )
        out.say(f"Per recipe{shown}:")
        out.say(
            f"  {'recipe':<41} {'runs':>8} {'linked':>8} {'migrate':>8} {'link':>6} {'orphan':>7}"
        )
        for r in rows:
            name = (r.recipe_name if r.recipe_name else "(deleted)")[:36]
            out.say(
                f"  {r.recipe_id:>4} {name:<36} {r.total_runs:>8,} {r.already_linked:>8,} "
                f"{r.to_migrate:>8,} {r.to_link_existing:>6,} {r.orphaned:>7,}"
            )
        hidden = len(the_plan.per_recipe) - len(rows)
        if hidden:
            out.say(f"  ... and {hidden:,} more recipes (--all-recipes lists them all)")
    for problem in the_plan.recipe_errors:
        out.say(
            f"  recipe {problem.recipe_id} cannot be snapshotted ({problem.runs:,} runs would "
            f"fail): {problem.error}"
        )
    if the_plan.orphaned_run_ids:
        for line in _id_lines("orphaned run ids", the_plan.orphaned_run_ids):
            out.say(line)
    if the_plan.undated_run_ids:
        for line in _id_lines("undated run ids", the_plan.undated_run_ids):
            out.say(line)
    out.say(f"Production runs:                 {the_plan.total_runs:>10,}")
    out.say(f"  already linked:                {the_plan.already_linked:>10,}")
    out.say(f"  to link to existing snapshot:  {the_plan.to_link_existing:>10,}")
    out.say(f"  to migrate (new snapshot):     {the_plan.to_migrate:>10,}")
    out.say(f"  orphaned (recipe gone):        {the_plan.orphaned:>10,}")
    if the_plan.undated_run_ids:
        out.say(f"  undated (produced_at NULL):    {the_plan.undated:>10,}")


def _pause(args: argparse.Namespace, engine: Engine) -> float:
    """``--pause``, or the backend's default (SQLite's waiting connections need a gap)."""
    return args.pause if args.pause is not None else default_pause(engine.dialect.name)


def _run_question(the_plan: backfill.Plan, database: str) -> str:
    return (
        f"Write {the_plan.to_migrate:,} new snapshots and link {the_plan.to_link_existing:,} "
        f"runs to existing ones in {database}?"
    )


def _print_run_report(out: Output, report: backfill.RunReport) -> None:
    out.say(
        f"Migrated {report.migrated:,}, linked to existing {report.linked_existing:,}, "
        f"skipped orphans {report.skipped_orphans:,}, "
        + (f"skipped undated {report.skipped_undated:,}, " if report.skipped_undated else "")
        + f"errors {len(report.errors):,} "
        f"({report.batches:,} batches, {report.duration_s:.2f}s)"
    )
    if report.batches:
        out.say(f"  longest batch {report.longest_batch_s:.2f}s")
    if report.too_recent:
        out.say(
            f"  left to the application: {report.too_recent:,} runs created in the last "
            "--min-age seconds or after the plan"
        )
    if report.skipped_undated:
        out.say(
            f"  undated runs (produced_at NULL, not snapshotted): "
            f"{_ids(report.plan.undated_run_ids)}"
        )
    for err in report.errors:
        out.say(f"  run {err.run_id}: {err.error}")


def _report_document(report: backfill.RunReport, database: str) -> dict[str, Any]:
    return {**report.to_dict(), "tool_version": __version__, "database": database}


def _check_report_path(path: Optional[Path]) -> None:
    if path is not None and not path.parent.is_dir():
        raise BadInputError(f"cannot write --report {path}: directory {path.parent} does not exist")


# --- commands -----------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    with _opened(args) as engine:
        the_plan = backfill.plan(engine)
    if out.as_json:
        out.json(the_plan.to_dict())
    else:
        _print_plan(out, the_plan, display_url(engine.url), all_recipes=args.all_recipes)
        out.say("Dry run: nothing was changed.")
    if args.check and the_plan.work:
        out.say(f"Check failed: {the_plan.work:,} runs would be written or linked.")
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    _check_report_path(args.report)
    progress = _ProgressPrinter(out, "runs", out.stderr)
    with _opened(args) as engine, contextlib.closing(progress):
        database = display_url(engine.url)
        # A report is no more readable than the SQLite file it describes.
        sqlite_file = sqlite_path(engine.url) if is_sqlite(engine.url) else None
        file_mode = sibling_mode(sqlite_file) if sqlite_file is not None else None
        the_plan = backfill.plan(engine)
        if not out.as_json:
            _print_plan(out, the_plan, database, all_recipes=args.all_recipes)
        if the_plan.work:
            young = backfill.count_too_recent(engine, args.min_age)
            if young and not out.as_json:
                out.say(
                    f"Of these, {young:,} runs created in the last {args.min_age:g} seconds are "
                    "left to the application (--min-age)."
                )
            question = _run_question(the_plan, database)
            _before_writing(out, engine, args, stdin, question)
        try:
            report = backfill.run(
                engine,
                batch_size=args.batch_size,
                lock_timeout=args.lock_timeout,
                on_progress=progress,
                known_plan=the_plan,
                max_batch_seconds=args.max_batch_seconds or None,
                pause_s=_pause(args, engine),
                min_age_s=args.min_age,
            )
        except InterruptedRunError as exc:
            progress.close()
            _finish_run(out, exc.report, database, args.report, file_mode)
            raise
    _finish_run(out, report, database, args.report, file_mode)
    return EXIT_OK if report.ok else EXIT_FAILED


def _finish_run(
    out: Output,
    report: backfill.RunReport,
    database: str,
    report_path: Optional[Path],
    file_mode: Optional[int] = None,
) -> None:
    document = _report_document(report, database)
    if report_path is not None:
        write_text_file(report_path, json.dumps(document, indent=2, default=str) + "\n", file_mode)
    if out.as_json:
        out.json(document)
    else:
        _print_run_report(out, report)


def cmd_verify(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    with _opened(args) as engine:
        report = backfill.verify(engine)
    if out.as_json:
        out.json(report.to_dict())
    else:
        for problem in report.problems:
            out.say(f"PROBLEM {problem.kind}: {problem.detail}")
        if report.problems_total > len(report.problems):
            out.say(f"... and {report.problems_total - len(report.problems)} more problems")
        verdict = "OK" if report.ok else f"FAILED ({report.problems_total} problems)"
        out.say(
            f"Verify {verdict}: {report.runs_checked} runs, {report.snapshots_checked} snapshots "
            f"checked; {len(report.orphaned_run_ids)} orphaned runs (recipe gone) left unlinked"
        )
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_rollback(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    progress = _ProgressPrinter(out, "entries", out.stderr)
    with _opened(args) as engine, contextlib.closing(progress):
        database = display_url(engine.url)
        # Validated before anything is asked or backed up: a file that is not the
        # application's database is refused, and with nothing to undo nothing is done.
        pending = backfill.rollback_pending(engine)
        if not pending:
            if out.as_json:
                out.json(backfill.RollbackReport().to_dict())
            else:
                out.say(f"Nothing to undo in {database}: no backfill of this tool is journaled.")
            return EXIT_OK
        question = f"Undo {pending:,} journaled links of this tool's backfill in {database}?"
        _before_writing(out, engine, args, stdin, question)
        try:
            report = backfill.rollback(
                engine,
                batch_size=args.batch_size,
                lock_timeout=args.lock_timeout,
                on_progress=progress,
                pause_s=_pause(args, engine),
            )
        except InterruptedRunError as exc:
            progress.close()
            _finish_rollback(out, exc.report)
            raise
    _finish_rollback(out, report)
    return EXIT_OK


def _finish_rollback(out: Output, report: backfill.RollbackReport) -> None:
    if out.as_json:
        out.json(report.to_dict())
        return
    out.say(
        f"Rolled back {report.journal_entries:,} journal entries: {report.runs_unlinked:,} runs "
        f"unlinked, {report.snapshots_deleted:,} snapshots deleted, {report.left_alone:,} left "
        f"alone (changed since) ({report.batches:,} batches, {report.duration_s:.2f}s)"
        + (" before the interruption" if report.interrupted else "")
    )


def cmd_upgrade(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    from .schema_upgrade import plan_upgrade, upgrade_schema

    with _opened(args) as engine:
        database = display_url(engine.url)
        plan = plan_upgrade(engine)
        if args.dry_run or plan.already_current:
            if out.as_json:
                out.json(_upgrade_document(plan, executed=0, dry_run=args.dry_run))
            elif plan.already_current:
                out.say(f"{database} already has the snapshot schema: nothing to do.")
            else:
                print(plan.sql_script(), end="", file=out.stdout)
                out.say("-- dry run: nothing was changed")
            return EXIT_OK
        require_writable(engine)
        out.say(f"{database} lacks: " + "; ".join(g.describe() for g in plan.gaps))
        _require_server_backup(out, engine, args)
        _confirm(out, f"Apply {len(plan.steps)} schema steps to {database}?", args.yes, stdin)
        report = upgrade_schema(
            engine,
            backup=lambda: _protect(out, engine, args),
            lock_timeout=args.lock_timeout,
        )
    if out.as_json:
        out.json(_upgrade_document(report.plan, executed=len(report.steps_executed)))
    else:
        for step in report.steps_executed:
            out.say(f"  step {step.number}/{step.total}: {step.description}")
        out.say(f"Schema upgraded: {len(report.steps_executed)} steps applied.")
    return EXIT_OK


def _upgrade_document(plan: Any, *, executed: int, dry_run: bool = False) -> dict[str, Any]:
    return {
        "already_current": plan.already_current,
        "dry_run": dry_run,
        "missing": [g.describe() for g in plan.gaps],
        "steps": [s.description for s in plan.steps],
        "steps_executed": executed,
        "sql": plan.sql_script(),
    }


def cmd_rehearse(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    from .rehearsal import rehearse

    _check_report_path(args.report)
    scratch_url = resolve_url(args.scratch_url) if args.scratch_url else None

    def on_phase(phase: str) -> None:
        INTERRUPTS.check()
        if phase == "battery":
            out.say("Checks:")

    def on_check(finding: Any) -> None:
        INTERRUPTS.check()
        ids = f" (runs {_ids(list(finding.run_ids))})" if finding.run_ids else ""
        out.say(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.check}: {finding.detail}{ids}")

    def on_leftover(leftover: Any) -> None:
        done = "removed" if leftover.removed else "not removed"
        out.say(f"Leftover scratch {leftover.name}: {done} ({leftover.reason})")

    from .testing.scratch import open_source

    busy_timeout = max(args.lock_timeout, MIN_SQLITE_BUSY_TIMEOUT_S)
    # Not _opened: a SQLite source is read through a read-only connection (see open_source).
    engine = open_source(resolve_url(args.database_url), busy_timeout=busy_timeout)
    try:
        out.say(f"Rehearsing {display_url(engine.url)} on a scratch copy (it is only read)")
        result = rehearse(
            engine,
            scratch_url=scratch_url,
            batch_size=args.batch_size,
            max_batch_seconds=args.max_batch_seconds,
            on_phase=on_phase,
            on_check=on_check,
            on_leftover=on_leftover,
        )
    finally:
        engine.dispose()
    if args.report is not None:
        write_text_file(args.report, result.to_markdown())
    if out.as_json:
        out.json(result.to_dict())
    else:
        scratch = result.scratch
        if scratch is not None:
            out.say(
                f"Scratch copy: {scratch.name} ({scratch.kind}; {scratch.rows_copied} rows of "
                f"{len(scratch.tables)} tables, {len(scratch.triggers)} triggers): removed"
            )
        out.say("Phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
        for name, value in result.measures():
            out.say(f"{name[:1].upper() + name[1:]}: {value}")
        for finding in result.battery.failed:
            ids = f" (runs {_ids(list(finding.run_ids))})" if finding.run_ids else ""
            out.say(f"FAILED {finding.check}: {finding.detail}{ids}")
        out.say(f"Verdict: {result.verdict}")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_load_sample(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    from .sample_data import DEFAULT_SAMPLE_PATH, load_sample_file

    url = resolve_url(args.database_url)
    report = load_sample_file(url, args.sample or DEFAULT_SAMPLE_PATH)
    out.say(f"Loaded {args.sample or DEFAULT_SAMPLE_PATH} into {display_url(url)}")
    for table, count in report.to_dict().get("inserted", {}).items():
        out.say(f"  {table}: {count}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output, stdin: TextIO) -> int:
    from .sample_data import DEFAULT_SAMPLE_PATH, load_sample_file

    directory = args.path or Path(tempfile.mkdtemp(prefix="snapshot-backfill-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / DEMO_DATABASE_NAME
    # Never delete or overwrite a file this invocation did not create: the database, its
    # journal and the lock file beside it must all be new.
    for ours in (database, *(database.with_name(database.name + s) for s in _DEMO_SIDE_FILES)):
        if ours.exists() or ours.is_symlink():
            raise BadInputError(
                f"{ours} already exists: demo writes only new files; move it away or choose "
                "another --path"
            )
    url = URL.create("sqlite", database=str(database.absolute()))
    old_schema = args.from_old_schema
    schema = " (the schema of before the snapshot feature)" if old_schema else ""
    out.say(f"== load-sample: {DEFAULT_SAMPLE_PATH.name} -> {database}{schema}")
    load_sample_file(
        url, DEFAULT_SAMPLE_PATH, **({"metadata": pre_snapshot_metadata()} if old_schema else {})
    )
    common = ["--database-url", str(database)]
    steps: list[tuple[str, list[str], Callable[..., int]]] = []
    if old_schema:
        steps += [
            ("upgrade-schema --dry-run", ["upgrade-schema", *common, "--dry-run"], cmd_upgrade),
            ("upgrade-schema", ["upgrade-schema", *common, "--yes"], cmd_upgrade),
        ]
    steps += [
        ("plan", ["plan", *common], cmd_plan),
        ("run", ["run", *common, "--yes"], cmd_run),
        ("run again (changes nothing)", ["run", *common, "--yes", "--no-backup"], cmd_run),
        ("verify", ["verify", *common], cmd_verify),
    ]
    parser = build_parser()
    code = EXIT_OK
    for title, argv, command in steps:
        out.say()
        out.say(f"== {title}")
        code = command(parser.parse_args(argv), out, stdin)
        if code != EXIT_OK:
            return code
    out.say()
    out.say(f"Demo database kept at {database}")
    out.say(f"Undo the backfill with: snapshot-backfill rollback --database-url {database}")
    return code


COMMANDS: dict[str, Callable[[argparse.Namespace, Output, TextIO], int]] = {
    "plan": cmd_plan,
    "run": cmd_run,
    "verify": cmd_verify,
    "rollback": cmd_rollback,
    "upgrade-schema": cmd_upgrade,
    "rehearse": cmd_rehearse,
    "load-sample": cmd_load_sample,
    "demo": cmd_demo,
}


# Commands that create a database never default to the application's: they name their own.
_CREATING_COMMANDS = ("load-sample", "demo")


def _apply_app_default(args: argparse.Namespace, out: Output) -> None:
    """Without a URL anywhere, use the application's default database, and say which and why."""
    if args.command in _CREATING_COMMANDS or not hasattr(args, "database_url"):
        return
    if args.database_url or os.environ.get(ENV_VAR, "").strip():
        return
    from .app_default import default_database

    chosen = default_database(os.environ, Path.cwd())
    out.say(f"Using {chosen.path}: {chosen.reason}")
    args.database_url = str(chosen.path)


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    stdin: Optional[TextIO] = None,
) -> int:
    """Run the command line; return the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    stdin = stdin or sys.stdin
    out = Output(stdout, stderr)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    command: Optional[str] = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        out.quiet = getattr(args, "quiet", False)
        out.as_json = getattr(args, "json", False)
        _apply_app_default(args, out)
        # A polite kill (SIGTERM) stops between batches like Ctrl-C does; and Ctrl-C works
        # even where the process was started with SIGINT ignored (a background job).
        with INTERRUPTS.installed():
            code = COMMANDS[args.command](args, out, stdin)
            INTERRUPTS.check()  # one lost in a finalizer: the command was still interrupted
            return code
    except InterruptedRunError as exc:
        out.error(str(exc))
        return exc.exit_code
    except BackfillError as exc:
        if debug:
            traceback.print_exc(file=stderr)
        out.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted: nothing more was written")
        return EXIT_INTERRUPTED
    except OperationalError as exc:
        # Locked, read-only, unreachable, out of space: the environment, not our data.
        if debug:
            traceback.print_exc(file=stderr)
        kept = " (batches committed before are kept)" if command in WRITING_COMMANDS else ""
        out.error(f"database error: {describe_db_error(exc)}{kept}")
        return EXIT_BAD_INPUT
    except DBAPIError as exc:
        if debug:
            traceback.print_exc(file=stderr)
        out.error(f"database error: {describe_db_error(exc)}")
        return EXIT_FAILED
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except Exception as exc:
        if debug:
            traceback.print_exc(file=stderr)
        out.error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return EXIT_FAILED


__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]
