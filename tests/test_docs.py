"""The documentation runs: every code block of every page under docs/ is run here or marked why not.

See ``docs_blocks.py`` for the convention. Python blocks of a page run in order in one namespace, bash
blocks with ``bash -e`` in between, all in a temporary folder with its own SQLite registry (the
working directory, as a user's shell would be); pages marked ``<!-- docs-test: after quickstart -->``
start from a copy of the folder the quickstart page left (``sentiment`` v1 the source, v2 its ONNX
export, ``@production`` on v2). The references generated at build time (CLI, API, tasks) are checked
against what they are generated from.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from typing import Any, Dict, Iterator, List, Optional

import mlflow
import pytest
from docs_blocks import ROOT, RUNNABLE, blocks, pages, read_page

sys.path.insert(0, os.path.join(ROOT, "scripts"))

import mkdocs_hooks  # noqa: E402

AFTER_QUICKSTART = "<!-- docs-test: after quickstart -->"
QUICKSTART = "quickstart.md"
#: ``make test`` spreads the pages over its workers (tests/conftest.py), except the quickstart and the pages that
#: start from its folder: they share one worker (``xdist_group``), so the quickstart runs once.
SPREAD_OVER_WORKERS = True
AFTER_QUICKSTART_GROUP = pytest.mark.xdist_group("docs-quickstart")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _runnable_pages() -> List[str]:
    return [p for p in pages() if any(b.lang in RUNNABLE and b.marker is None for b in blocks(p))]


def test_every_block_is_run_or_marked() -> None:
    problems = []
    for page in pages():
        for block in blocks(page):
            if block.marker == "not-run" and not block.marker_text:
                problems.append(f"{block.where()}: 'not-run:' without a reason")
            elif block.marker == "used-by":
                test_file, _, name = block.marker_text.partition(" as ")
                path = os.path.join(ROOT, test_file.strip())
                reads = os.path.isfile(path) and page in _read(path)
                if not name.strip() or not reads:
                    problems.append(f"{block.where()}: 'used-by: {block.marker_text}' names no test that reads "
                                    f"docs/{page}")
            elif block.marker is None and block.lang not in RUNNABLE:
                problems.append(f"{block.where()}: a {block.lang or 'plain'} block that is not run; mark it "
                                "'<!-- not-run: <reason> -->' or make it python/bash")
    assert not problems, "\n".join(problems)


def test_the_docs_run_their_blocks() -> None:
    """The pages with blocks to run are the ones the page tests below run (the rule above has teeth)."""
    assert QUICKSTART in _runnable_pages()
    assert len(_runnable_pages()) >= 8, _runnable_pages()


def _cli_lines(code: str) -> Optional[List[List[str]]]:
    """The commands of a bash block made only of ``export NAME=value`` and ``mlflow-tfexport ...`` lines
    (comments and ``\\`` continuations allowed), split as bash would; ``None`` for any other block."""
    commands: List[List[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            return None
        if not words:
            continue
        setting = words[0] == "export" and len(words) == 2 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=[^$`]*", words[1])
        ours = words[0] == "mlflow-tfexport" and not any(c in line for c in "|&;$`<>")
        if not (setting or ours):
            return None
        commands.append(words)
    return commands


def _run_cli_block(block: Any, env: Dict[str, str]) -> None:
    """Run a block of ``_cli_lines`` in this process (``cli.main.main``, what the console script calls), with
    ``bash -e``'s rule: the first command that fails fails the block. A new interpreter per command costs
    seconds of imports each; the quickstart's blocks still run through bash and the console script."""
    from mlflow_tfexport.cli.main import main

    saved = dict(os.environ)
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    try:
        for words in _cli_lines(block.code) or []:
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                os.environ[name] = value
                continue
            with warnings.catch_warnings():
                try:
                    code = main(words[1:])
                except SystemExit as exc:  # argparse
                    code = exc.code if isinstance(exc.code, int) else 1
            assert code == 0, f"{block.where()}: {shlex.join(words)} exited {code}\n{block.code}"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_page(page: str, folder: str) -> None:
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(HF_HUB_OFFLINE="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    namespace: Dict[str, Any] = {"__name__": "__docs__"}
    previous = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks(page):
            if block.marker is not None or block.lang not in RUNNABLE:
                continue
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            if block.lang == "python":
                try:
                    exec(compile(block.code, block.where(), "exec"), namespace)
                except Exception as exc:
                    raise AssertionError(f"{block.where()} failed: {exc!r}\n{block.code}") from exc
            elif page != QUICKSTART and _cli_lines(block.code) is not None:
                _run_cli_block(block, env)
            else:
                done = subprocess.run(["bash", "-e", "-c", block.code], env=env, capture_output=True, text=True,
                                      timeout=900)
                assert done.returncode == 0, (f"{block.where()} exited {done.returncode}\n{block.code}\n"
                                              f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        os.chdir(previous)


def _fresh_folder(root: Any) -> str:
    folder = str(root)
    os.symlink(os.path.join(ROOT, "examples"), os.path.join(folder, "examples"))
    return folder


@pytest.fixture(scope="session")
def quickstart_folder(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: str) -> Iterator[str]:
    folder = _fresh_folder(tmp_path_factory.mktemp("docs-quickstart"))
    shutil.copyfile(_empty_mlflow_db, os.path.join(folder, "mlflow.db"))
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        _run_page(QUICKSTART, folder)
        yield folder
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


@pytest.mark.slow
@pytest.mark.integration
@AFTER_QUICKSTART_GROUP
def test_quickstart_page_runs(quickstart_folder: str) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{quickstart_folder}/mlflow.db", f"sqlite:///{quickstart_folder}/mlflow.db")
    assert client.get_model_version_by_alias("sentiment", "production").tags["tfexport.format"] == "onnx"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("page", [
    pytest.param(p, marks=[AFTER_QUICKSTART_GROUP] if AFTER_QUICKSTART in read_page(p) else [])
    for p in _runnable_pages() if p != QUICKSTART
])
def test_page_runs(page: str, tmp_path: Any, request: pytest.FixtureRequest, _empty_mlflow_db: str) -> None:
    if AFTER_QUICKSTART in read_page(page):
        source = request.getfixturevalue("quickstart_folder")
        folder = str(tmp_path / "work")
        shutil.copytree(source, folder, symlinks=True)
    else:
        folder = _fresh_folder(tmp_path)
        shutil.copyfile(_empty_mlflow_db, os.path.join(folder, "mlflow.db"))
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        _run_page(page, folder)
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


# The references generated at build time (scripts/mkdocs_hooks.py).


def test_cli_reference_has_every_subcommand_and_option() -> None:
    from mlflow_tfexport.cli.main import build_parser

    text = mkdocs_hooks.render_cli_reference()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():  # type: ignore[attr-defined]
        assert f"## `mlflow-tfexport {name}`" in text
        for action in sub._actions:
            if action.__class__.__name__ == "_HelpAction":  # -h, the same on every subcommand
                continue
            for option in action.option_strings:
                assert f"`{option}`" in text, (name, option)
    assert mkdocs_hooks.MARKER in read_page("reference/cli.md")


def test_api_reference_documents_all_of_the_public_api() -> None:
    import mlflow_tfexport

    text = mkdocs_hooks.render_api_reference()
    documented = re.findall(r"^::: (\S+)$", text, flags=re.M)
    assert len(documented) == len(mlflow_tfexport.__all__)
    for name in mlflow_tfexport.__all__:
        assert any(path.rsplit(".", 1)[-1] == getattr(getattr(mlflow_tfexport, name), "__qualname__", name)
                   or path == f"mlflow_tfexport.{name}" for path in documented), name
    assert mkdocs_hooks.API_MARKER in read_page("reference/api.md")


def test_tasks_table_lists_every_task() -> None:
    from mlflow_tfexport import TASKS

    table = mkdocs_hooks.render_tasks_table()
    assert all(f"| `{name}` |" in table for name in TASKS)
    assert mkdocs_hooks.TASKS_MARKER in read_page("index.md")


def _anchors(page: str) -> List[str]:
    """The heading ids MkDocs' toc gives ``page`` (lowercase, punctuation dropped, spaces as dashes)."""
    ids = []
    text = read_page(page)
    if mkdocs_hooks.MARKER in text:  # the CLI reference is generated at build time
        text += "\n" + mkdocs_hooks.render_cli_reference()
    for line in text.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).lower()
            ids.append(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))
    return ids


def test_relative_links_resolve() -> None:
    """What ``mkdocs build --strict`` refuses, without a build: a link to a page that is not there (a page
    under docs/serving/ linking ``quickstart.md`` instead of ``../quickstart.md``) or to a missing anchor."""
    broken = []
    for page in pages():
        text = re.sub(r"```.*?```", "", read_page(page), flags=re.S)
        for target, anchor in re.findall(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)", text):
            if target and not target.endswith(".md"):
                continue
            linked = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
            if not os.path.isfile(os.path.join(ROOT, "docs", linked)):
                broken.append(f"docs/{page}: ({target}) is not a page")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"docs/{page}: ({target}#{anchor}) has no such heading")
    assert not broken, "\n".join(broken)


def test_every_page_is_in_the_nav() -> None:
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        nav = f.read().split("\nnav:", 1)[1]
    missing = [p for p in pages() if f" {p}" not in nav]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


# What the docs show and what CI does.


def _requirements(text: str) -> List[str]:
    return sorted(re.findall(r'"((?:mlserver|mlserver-mlflow|pandas)[^"]*)"', text))


def test_mlserver_install_recipe_is_what_ci_runs() -> None:
    install = next(b for b in blocks("serving/mlserver.md") if "pip install" in b.code)
    with open(os.path.join(ROOT, ".ci", "mlserver.sh")) as f:
        ci = next(line for line in f if "pip install" in line)
    assert _requirements(install.code) == _requirements(ci) != []
    assert "--system-site-packages" not in install.code and "site.addsitedir" in install.code


def test_readme_is_the_front_door() -> None:
    readme = _read(os.path.join(ROOT, "README.md"))
    assert len(readme.splitlines()) <= 250
    assert re.search(r"```bash\n(?:.*\n)*?[^\n]*\bmake test\b", readme), "the README shows `make test`"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert re.search(r"^\s*make test\b", f.read(), flags=re.M), ".ci/run runs the README's `make test`"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link




