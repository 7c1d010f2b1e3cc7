"""MkDocs hook: the CLI and API references, generated at build time.

``<!-- tasks-table -->`` becomes the table of supported tasks (``mlflow_tfexport.TASKS``).
``<!-- api-reference -->`` becomes one mkdocstrings block (``::: mlflow_tfexport.NAME``) per name
of ``mlflow_tfexport.__all__``, grouped into functions, classes, constants and errors; mkdocstrings
renders each from its docstring and signature.


A page that contains the line ``<!-- cli-reference -->`` gets, in its place, one section per
subcommand of ``mlflow-tfexport`` (usage, description, a table of its arguments), taken from
``mlflow_tfexport.cli.main.build_parser()``. Nothing is copied by hand, so a new option or a new
help text shows up in the docs with the next build. ``render_cli_reference()`` is also what
``tests/test_docs.py`` checks against the parser.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, List

MARKER = "<!-- cli-reference -->"
API_MARKER = "<!-- api-reference -->"
TASKS_MARKER = "<!-- tasks-table -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _expand(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text with ``%(default)s`` and friends filled in, as argparse prints it."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    formatter = parser._get_formatter()  # argparse has no public API for one action's help
    return formatter._expand_help(action)


def _argument(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or (action.dest.upper() if not action.choices else None)
            if action.choices and not action.metavar:
                metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            names += f" `{metavar}`"
        return names
    return f"`{action.metavar or action.dest}`"


def _default(action: argparse.Action) -> str:
    if not action.option_strings:
        return "" if action.nargs in ("?", "*") else "required"
    if action.required:
        return "required"
    if action.nargs == 0 or action.default is None or action.default == argparse.SUPPRESS or action.default == []:
        return ""
    return f"`{action.default}`"


def _section(name: str, parser: argparse.ArgumentParser, level: int, summary: str | None = None) -> List[str]:
    out = [f"{'#' * level} `{name}`", ""]
    prefix = "usage: "
    lines = parser.format_usage().rstrip().splitlines()
    usage = "\n".join([lines[0][len(prefix):]] + [line[len(prefix):] for line in lines[1:]])
    out += ["```text", usage, "```", ""]
    if parser.description or summary:
        out += [_cell(str(parser.description or summary)), ""]
    rows = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        out += ["| argument | default | meaning |", "|---|---|---|"]
        out += [f"| {_argument(a)} | {_default(a)} | {_cell(_expand(parser, a))} |" for a in rows]
        out.append("")
    return out


def render_cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown for every subcommand of the parser (default: ``mlflow-tfexport``'s)."""
    if parser is None:
        from mlflow_tfexport.cli.main import build_parser

        parser = build_parser()
    os.environ.setdefault("COLUMNS", "100")  # stable usage lines, whatever the terminal
    out = _section(parser.prog, parser, 2)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                out += _section(f"{parser.prog} {name}", sub, 2, helps.get(name))
    return "\n".join(out)


def render_api_reference() -> str:
    """mkdocstrings blocks for every public name (``mlflow_tfexport.__all__``), grouped by kind."""
    import inspect

    import mlflow_tfexport

    groups: dict[str, List[str]] = {"Functions": [], "Classes": [], "Constants and tables": [], "Errors": []}
    for name in mlflow_tfexport.__all__:
        obj = getattr(mlflow_tfexport, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            kind = "Errors"
        elif inspect.isroutine(obj):
            kind = "Functions"
        elif inspect.isclass(obj) and obj.__module__ != "mlflow_tfexport.constants":  # constants: name tables
            kind = "Classes"
        else:
            kind = "Constants and tables"
        # Where it is defined: ``mlflow_tfexport.export`` is also the name of a subpackage, which a static
        # reader of the source (griffe) finds first.
        defined = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isroutine(obj) else None
        groups[kind].append(f"{defined}.{obj.__qualname__}" if defined else f"mlflow_tfexport.{name}")
    out: List[str] = []
    for title, paths in groups.items():
        if paths:
            out += [f"## {title}", ""]
            for path in paths:
                out += [f"::: {path}", "    options:", "      heading_level: 3", "      show_root_full_path: false", ""]
    return "\n".join(out)


def render_tasks_table() -> str:
    """The supported tasks, from the task table (``mlflow_tfexport.TASKS``), with the names also accepted."""
    from mlflow_tfexport import TASKS

    rows = ["| task | also accepted as |", "|---|---|"]
    for name, spec in TASKS.items():
        rows.append(f"| `{name}` | {', '.join(f'`{a}`' for a in spec.aliases)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render_cli_reference())
    if TASKS_MARKER in markdown:
        markdown = markdown.replace(TASKS_MARKER, render_tasks_table())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, render_api_reference())
    return markdown
