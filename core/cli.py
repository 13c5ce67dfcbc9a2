"""The ``batchbridge`` command. Each group of subcommands lives in ``core/commands/<group>.py`` and
exposes ``register(subparsers)``; every command returns an exit status and reports bad input as a
typed error on stderr, never as a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import BatchBridgeError
from .logs import configure_logging
from .secrets import redact

_GROUPS = ("normalize", "backend", "bridge", "ops", "state")


class _Defaults(argparse.HelpFormatter):
    """Each option's default in ``--help`` unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, [], argparse.SUPPRESS)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return action.help
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchbridge")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``, the installed metadata read only when asked (not on every command's start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from .speedups import describe

        # on stdout, as argparse's own version action prints it; the second line says whether the
        # normalising path runs compiled (about a third less CPU time) or as pure Python, and why
        print(f"batchbridge {_version()}\n{describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchbridge",
        description="Decode, normalise and publish cloud batch-compute lifecycle events as CloudEvents.",
        formatter_class=_Defaults,
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log records as text lines (default) or one JSON object per line, with the event id, "
                             "type and backend as fields")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"batchbridge.core.commands.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"batchbridge.core.commands.{group}":
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():
        command.formatter_class = _Defaults
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    # force=False: an embedding application's (or pytest's) handlers stay in charge, as with basicConfig
    configure_logging(json=args.log_format == "json", level=level, force=False)
    try:
        status: int = args.func(args)
    except BatchBridgeError as exc:
        print(f"batchbridge: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
