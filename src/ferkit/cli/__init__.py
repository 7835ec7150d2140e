"""The ``ferkit`` command line. It only parses arguments and calls the stage functions.

Each command's parser and runner live in the module of its group: :mod:`~ferkit.cli.data`
(prepare, soft-labels), :mod:`~ferkit.cli.train`, :mod:`~ferkit.cli.evaluate` (evaluate,
compare, benchmark, framing-fit), :mod:`~ferkit.cli.predict` (predict, demo),
:mod:`~ferkit.cli.models` (models, bundle, export) and :mod:`~ferkit.cli.serve`; what
their parsers share is in :mod:`~ferkit.cli.common`. This module assembles the parser,
runs the command, turns its errors into exit statuses and keeps the libraries' start-up
lines off the terminal.

Nothing heavy is imported at module level, so ``ferkit --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ferkit import __version__
from ferkit.cli.data import add_prepare, add_soft_labels
from ferkit.cli.evaluate import add_benchmark, add_compare, add_evaluate, add_framing_fit
from ferkit.cli.models import add_bundle, add_export, add_models
from ferkit.cli.predict import add_demo, add_predict
from ferkit.cli.serve import add_serve
from ferkit.cli.train import add_train

logger = logging.getLogger("ferkit")


COMMANDS = {
    "prepare": add_prepare, "train": add_train, "soft-labels": add_soft_labels,
    "bundle": add_bundle, "evaluate": add_evaluate, "compare": add_compare,
    "predict": add_predict, "models": add_models, "export": add_export,
    "demo": add_demo, "serve": add_serve, "benchmark": add_benchmark,
    "framing-fit": add_framing_fit,
}  # fmt: skip


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` (a command's parser
    imports what its defaults come from, so building one alone starts faster)."""
    parser = argparse.ArgumentParser(
        prog="ferkit",
        description="Facial-expression recognition: prepare datasets, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, add in COMMANDS.items():
        if only is None or command == only:
            add(subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if known."""
    words = [word for word in argv if not word.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ferkit`` console script; returns the exit status."""
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    original_stdout = sys.stdout
    sys.stdout = _PipeSafeStdout(sys.stdout)
    try:
        with _quiet_libraries(args.verbose):
            return _run(args)
    finally:
        sys.stdout = original_stdout


def _run(args: argparse.Namespace) -> int:
    from ferkit.extras import MissingExtraError
    from ferkit.models.folder import ChecksumError
    from ferkit.outputs import OutputLockedError

    try:
        return args.handler(args)
    except (
        OSError, ValueError, KeyError, ChecksumError, OutputLockedError, MissingExtraError,
    ) as error:  # fmt: skip
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ferkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ferkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.verbose:
            traceback.print_exc()
        print(
            f"ferkit {args.command}: internal error: {type(error).__name__}: {error}"
            + ("" if args.verbose else " (run with --verbose for the traceback)"),
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Show ferkit's own messages only, unless ``--verbose``.

    TensorFlow, CUDA, LiteRT and ONNX Runtime print start-up lines from native code
    straight to the process's standard error (file descriptor 2), which no Python setting
    reaches. So, for the command's duration, descriptor 2 goes to /dev/null while
    Python's ``sys.stderr`` (ferkit's messages, progress bars, errors) keeps writing to
    the terminal through a copy of the original descriptor; library warnings and log
    records below ERROR are dropped. Everything is restored afterwards.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        previous = os.environ.get("FERKIT_VERBOSE")
        os.environ["FERKIT_VERBOSE"] = "1"  # native libraries' lines too
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            if previous is None:
                del os.environ["FERKIT_VERBOSE"]
            else:
                os.environ["FERKIT_VERBOSE"] = previous
        return
    handler.addFilter(lambda record: record.name.startswith("ferkit") or record.levelno >= 40)
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR")):
        os.environ.setdefault(name, value)
    saved_stderr = sys.stderr
    saved_fd = None
    try:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        if _writes_to_fd(sys.stderr, 2):
            sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, errors="backslashreplace")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        if sys.stderr is not saved_stderr:  # a crash of native code is still reported
            faulthandler.enable(file=sys.stderr)
    except OSError:  # no descriptor 2 to redirect (embedded interpreters): stay as we are
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if sys.stderr is not saved_stderr:
            faulthandler.disable()
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = saved_stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        root.removeHandler(handler)
        root.setLevel(previous_level)


class _PipeSafeStdout:
    """Standard output that a closed reader (``ferkit predict ... | head``) cannot break:
    the run goes on and writes its results; what it would print is dropped."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self._broken = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            # Python's own flush at exit must not fail on the closed pipe either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is when a record comes, so
    ferkit's warnings follow the terminal copy that :func:`_quiet_libraries` installs."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # set by StreamHandler.__init__; ignored
        pass


def _writes_to_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False
