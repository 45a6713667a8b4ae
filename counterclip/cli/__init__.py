"""The `counterclip` command line.

Each group of commands lives in its own module with a ``register(app, eval_app)`` function, so the
issues that fill them do not edit one shared file. A command is a module-level function that parses
its options, calls the library and prints (the query commands' tables: `query_printers`); ``register``
only adds the commands. Errors the user can fix (`CounterclipError`) are printed as one line with exit
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

# OpenMP threads that wait by spinning keep a core busy: beside any other busy process, FAISS's k-means
# (training an index) with 2 spinning threads took 7.4 s where passive waiting took 2.9 s (16k vectors,
# 2 cores; 1 thread: 2.4 s), and 1M-vector imports lost minutes. Read once, when torch or faiss first
# loads the OpenMP runtime, so it is set before any of them is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from counterclip._version import __version__
from counterclip.cli import (
    classic,
    demo,
    engine_cmds,
    explain_cmds,
    index_cmds,
    model_cmds,
    quality_cmds,
    scale_cmds,
    serve_cmds,
    shapes_cmds,
    store_cmds,
)
from counterclip.cli._common import console
from counterclip.errors import CounterclipError

app = typer.Typer(
    name="counterclip",
    help="Explain CLIP-style models with verified counterfactuals from your own image collection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
eval_app = typer.Typer(
    help="Measure model, counterfactual and explainer quality on the shapes world.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"counterclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    """counterclip: verified counterfactuals and attribution maps for CLIP-style models.

    Examples:

      counterclip demo --out demo-out

      counterclip build ~/Photos --index photos.idx --model bundled:shapes

      counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a dog"
    """
    # Third-party libraries log loudly (hub retries); show their errors only, and ours by verbosity.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("counterclip").setLevel(logging.INFO if verbose else logging.WARNING)


for _module in (
    model_cmds,
    shapes_cmds,
    index_cmds,
    scale_cmds,
    engine_cmds,
    demo,
    explain_cmds,
    classic,
    serve_cmds,
    quality_cmds,
    store_cmds,
):
    _module.register(app, eval_app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status (used by `main` and by tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        result = app(args=argv, prog_name="counterclip", standalone_mode=False)
    except CounterclipError as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
        return exc.exit_code
    except OSError as exc:  # a full disk or a permission problem the command did not name itself
        message = _storage_error(exc)
        if debug or message is None:
            raise
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.print("aborted")
        return 1
    except TyperException as exc:  # usage errors: typer prints them like click does
        if hasattr(exc, "show"):
            exc.show()
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0


def _storage_error(exc: OSError) -> str | None:
    """One line for the storage errors a user fixes (disk full, permissions, read-only), else None."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free space and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}; run as a user who may read and write it"
    if exc.errno == errno.EROFS:
        return f"read-only file system{where}; write somewhere else or remount it read-write"
    return None


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
