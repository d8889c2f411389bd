"""The command-line reference (``docs/cli.md``), rendered as Markdown from the ``argparse`` parsers.

Regenerate the page with ``python -m dsekit.cli.reference > docs/cli.md``; ``tests/test_docs.py``
checks that the page equals :func:`cli_reference`, so the reference cannot drift from the parsers.

The page is built from the parsers' actions, not from ``argparse``'s help formatter, so it does
not depend on the terminal width or on the Python version's help layout. Like the command line
itself, this module imports no torch: only ``argparse`` and the ``dsekit.cli`` package.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from . import build_parser

__all__ = ["REGENERATE", "cli_reference"]

REGENERATE = "python -m dsekit.cli.reference > docs/cli.md"


def _escape(text: str) -> str:
    """Help text as Markdown prose: characters that Markdown would read as markup are escaped."""
    text = text.replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    text = re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)  # underscores inside words are plain text
    if text.count("`") % 2:
        text = text.replace("`", "\\`")
    return " ".join(text.split())


def _expand_help(action: argparse.Action, prog: str) -> str:
    """``action.help`` with ``%(default)s``-style fields filled in and ``%%`` undone, as argparse does."""
    text = action.help or ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    for name, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[name] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return text % params


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _with_nargs(action: argparse.Action, metavar: str) -> str:
    if action.nargs == 0:
        return ""
    if action.nargs == "?":
        return f"[{metavar}]"
    if action.nargs == "*":
        return f"[{metavar} ...]"
    if action.nargs == "+":
        return f"{metavar} [{metavar} ...]"
    if isinstance(action.nargs, int):
        return " ".join([metavar] * action.nargs)
    return metavar


def _invocation(action: argparse.Action) -> str:
    """``--name METAVAR`` (the long and short names, comma-separated), or the positional's name."""
    args = _with_nargs(action, _metavar(action))
    if not action.option_strings:
        return args
    names = ", ".join(action.option_strings)
    return f"{names} {args}" if args else names


def _default(action: argparse.Action) -> str | None:
    default = action.default
    if action.nargs == 0 or default in (None, argparse.SUPPRESS) or action.required:
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default) if default else None
    return str(default)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, short help, parser)`` of each sub-command of ``parser``, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


def _synopsis(prog: str, parser: argparse.ArgumentParser) -> str:
    """``PROG positionals --required-option VALUE [OPTIONS]`` (``[OPTIONS]`` before a sub-command)."""
    words = [prog]
    optional = any(a.option_strings and not a.required for a in _visible(parser))
    command = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = f"{_metavar(action)} ..."
        elif isinstance(action, argparse._HelpAction):
            continue
        elif not action.option_strings:
            words.append(_with_nargs(action, _metavar(action)))
        elif action.required:
            words.append(f"{action.option_strings[-1]} {_with_nargs(action, _metavar(action))}".strip())
    if optional:
        words.append("[OPTIONS]")
    if command:
        words.append(command)
    return " ".join(words)


def _anchor(prog: str) -> str:
    return "-".join(prog.lower().split())


def _exclusive(parser: argparse.ArgumentParser) -> dict[argparse.Action, list[argparse.Action]]:
    out: dict[argparse.Action, list[argparse.Action]] = {}
    for group in getattr(parser, "_mutually_exclusive_groups", []):
        for action in group._group_actions:
            out[action] = [a for a in group._group_actions if a is not action]
    return out


def _option_line(action: argparse.Action, prog: str, exclusive: list[argparse.Action]) -> str:
    notes = []
    if action.required and action.option_strings:
        notes.append("**required**")
    default = _default(action)
    if default is not None:
        notes.append(f"default `{default}`")
    if exclusive:
        notes.append("not with " + ", ".join(f"`{a.option_strings[-1]}`" for a in exclusive))
    head = f"`{_invocation(action)}`" + (f" ({'; '.join(notes)})" if notes else "")
    text = _escape(_expand_help(action, prog))
    return f"- {head}: {text}" if text else f"- {head}"


def _command(prog: str, summary: str, parser: argparse.ArgumentParser, depth: int) -> list[str]:
    lines = ["#" * depth + f" {prog}", ""]
    description = parser.description or summary
    if description:
        lines += [_escape(description), ""]
    lines += ["```text", _synopsis(prog, parser), "```", ""]
    actions = _visible(parser)
    positionals = [a for a in actions if not a.option_strings]
    options = [a for a in actions if a.option_strings]
    exclusive = _exclusive(parser)
    if positionals:
        lines += ["Arguments:", ""]
        lines += [_option_line(a, prog, exclusive.get(a, [])) for a in positionals]
        lines.append("")
    if options:
        lines += ["Options:", ""]
        lines += [_option_line(a, prog, exclusive.get(a, [])) for a in options]
        lines.append("")
    subs = list(_subcommands(parser))
    if subs:
        lines += ["Commands:", ""]
        lines += [f"- [`{name}`](#{_anchor(f'{prog} {name}')}): {_escape(help_)}" for name, help_, _ in subs]
        lines.append("")
        for name, help_, sub in subs:
            lines += _command(f"{prog} {name}", help_, sub, depth + 1)
    return lines


def cli_reference() -> str:
    """The Markdown page of every ``dsekit`` command and option (``docs/cli.md``)."""
    parser = build_parser()
    lines = [
        f"<!-- Generated from the argparse parsers by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "# Command line",
        "",
        f"This page is generated from the command line's parsers: regenerate it with `{REGENERATE}` "
        "(`tests/test_docs.py` fails when it is out of date). Every command also takes `-h`/`--help`, "
        "and `python -m dsekit` is the same as `dsekit`.",
        "",
    ]
    lines += _command(parser.prog, "", parser, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(cli_reference(), end="")
