"""What the parsers of all ``ferkit`` commands share: the help layout (every option's
default shown), the exit statuses and the output-folder policy in the help text, and the
``--overwrite`` and ``--model`` flags."""

from __future__ import annotations

import argparse

#: Exit statuses, documented in ``ferkit --help`` and the README.
EXIT_STATUSES = (
    "exit status: 0 done; 2 refused (bad arguments or input, an --out that holds results, "
    "a damaged model) with nothing written; 3 completed, but some inputs failed (each is "
    "listed in the summary); 1 unexpected internal error; 130 interrupted"
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (settings that come from --config say so) and wraps
    the description paragraph by paragraph."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n\n".join(
            textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                          break_on_hyphens=False,
                          subsequent_indent=indent)
            for paragraph in text.split("\n\n")
        )  # fmt: skip

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "(default" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


OUTPUT_POLICY = (
    "Results are written whole or not at all (into a hidden folder beside --out, renamed "
    "into place when complete). An --out that already holds files is refused unless "
    "--overwrite is given, and --overwrite replaces only an earlier output of the same "
    "command. An --out inside an input is refused. A second run into the same --out while "
    "one is running fails at once."
)


def overwrite_flag(parser: argparse.ArgumentParser, what: str = "results") -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the {what} that an earlier run of this command wrote in --out "
        "(nothing else is ever replaced)",
    )


def model_flag(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"{prefix}an installed model's name ('ferkit models' lists them: default, ferplus), "
        "or a run, bundle or export folder, or a model file (default: the bundled default model)",
    )
