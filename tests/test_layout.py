"""The package's shape, checked: no import cycles, tasks and formats as tables, names from constants.py,
and the pip extras that the missing-package errors name.

These tests read the source with ``ast``; they fail when a change brings back a cycle, a task-name
comparison outside ``tasks.py`` or a magic string that ``constants.py`` names.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import mlflow_tfexport
from mlflow_tfexport import _lazy, constants
from mlflow_tfexport.errors import MissingDependencyError
from mlflow_tfexport.formats import FORMATS
from mlflow_tfexport.tasks import TASKS

PACKAGE_DIR = os.path.dirname(os.path.abspath(mlflow_tfexport.__file__))
ROOT = os.path.dirname(PACKAGE_DIR)
PKG = "mlflow_tfexport"


def modules() -> Dict[str, str]:
    """Module name -> file, for every module of the package."""
    found = {}
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), ROOT)[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, name)
    return found


MODULES = modules()


def parse(path: str) -> ast.Module:
    with open(path) as f:
        return ast.parse(f.read(), filename=path)


def _targets(node: ast.AST) -> List[str]:
    """The package modules an import statement loads (``from a import b`` loads ``a.b`` when it is a module)."""
    names: List[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    out = []
    for name in names:
        if name.split(".")[0] != PKG:
            continue
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES:
            out.append(name)
    return out


def imports(module: str) -> Tuple[Set[str], List[str]]:
    """(module-level imports of package modules; function-level ones).

    An import of ``a.b.c`` also runs the package ``a.b``'s ``__init__``, but only an import that names the package
    (``from a.b import name``) needs it finished: a package ``__init__`` that re-exports its modules (a facade)
    imports them without a cycle. So only the named modules count."""
    top: Set[str] = set()
    lazy: List[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child):
                    if in_function:
                        lazy.append(target)
                    else:
                        top.add(target)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(parse(MODULES[module]), False)
    top.discard(module)
    return top, lazy


GRAPH = {m: imports(m)[0] for m in MODULES}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles_between_the_package_modules() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The ground floor: the tables and names every other part reads. They import nothing above them.
GROUND_FLOOR = {f"{PKG}.{name}" for name in ("constants", "errors", "_lazy", "tasks", "formats")}


def test_the_ground_floor_imports_only_the_ground_floor() -> None:
    """The task table names its behaviour (``postprocess="fill_mask"``); serving resolves the name
    (``serving.rules``). No arrow runs from the tables up into serving, export or the registry."""
    upward = sorted(f"{module} -> {target}" for module in GROUND_FLOOR for target in GRAPH.get(module, ())
                    if target not in GROUND_FLOOR)
    assert upward == []


def test_every_rule_the_task_table_names_is_known_to_serving() -> None:
    from mlflow_tfexport.serving import rules
    from mlflow_tfexport.tasks import CUSTOM

    for spec in [*TASKS.values(), CUSTOM]:
        assert (spec.postprocess is None) != (spec.generate is None), spec.name
        if spec.postprocess is not None:
            assert callable(rules.postprocess_of(spec))
        else:
            assert callable(rules.decoder_of(spec).stream)


#: Function-level imports of the package's own modules, each with the reason it cannot be at module level.
LAZY_IMPORTS_ALLOWED: Dict[Tuple[str, str], str] = {}


def lazy_imports() -> Iterator[Tuple[str, str]]:
    for module in sorted(MODULES):
        for target in sorted(set(imports(module)[1])):
            yield module, target


def test_function_level_imports_of_the_package_are_the_listed_ones() -> None:
    """Each remaining function-level import is listed with its reason (a heavy optional dependency, or the
    serving tree reaching for an export-side module); anything else belongs at module level."""
    assert sorted(set(lazy_imports())) == sorted(LAZY_IMPORTS_ALLOWED)


def _task_names() -> Set[str]:
    return set(TASKS) | {alias for spec in TASKS.values() for alias in spec.aliases}


def _string_constants(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _string_constants(element)


def test_no_task_name_comparisons_outside_the_task_table() -> None:
    """Code asks the task spec (output_kind, keeps_labels, encoder_decoder...) instead of comparing names."""
    names = _task_names()
    found = []
    for module, path in MODULES.items():
        if module == f"{PKG}.tasks":
            continue
        for node in ast.walk(parse(path)):
            operands: List[ast.AST] = []
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.Dict):
                operands = [k for k in node.keys if k is not None]
            for operand in operands:
                hits = names.intersection(_string_constants(operand))
                if hits:
                    found.append(f"{module}:{node.lineno} {sorted(hits)}")
    assert not found


#: Names that live in constants.py: a string equal to one of them elsewhere is a magic string.
NAMED = {
    value: name
    for name, value in [*vars(constants).items(), *vars(constants.Tag).items()]
    if name.isupper() and isinstance(value, str) and name.endswith(("_FILE", "_DIR", "RUN_ID"))
}


def _attribute_names(tree: ast.Module) -> Set[int]:
    """The ids of string constants naming an attribute (``getattr(obj, "name")``): not file names."""
    return {id(node.args[1]) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1}


def test_file_folder_and_tag_names_come_from_constants() -> None:
    assert {"tokenizer.json", "MLmodel", "tfexport.source_run_id", "tokenizer", "code"} <= set(NAMED)
    found = []
    for module, path in MODULES.items():
        if module == f"{PKG}.constants":
            continue
        tree = parse(path)
        attributes = _attribute_names(tree)
        for node in ast.walk(tree):
            named = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMED
            if named and id(node) not in attributes:
                found.append(f"{module}:{node.lineno} {node.value!r} (constants.{NAMED[node.value]})")
    assert not found


def test_every_format_has_a_round_trip_test() -> None:
    """Adding a format means adding its round trip: save or export, load through the pyfunc, compare."""
    import test_export
    import test_flavor
    import test_neuron
    import test_torchscript

    tested = {
        "transformers": test_flavor.test_text_classification_round_trip,
        "onnx": test_export.test_onnx_variant_predicts_like_the_source,
        "torchscript": test_torchscript.test_round_trip_predictions_equal_eager_source,
        "neuron": test_neuron.test_neuron_stand_in_variant_serves_like_the_source,
    }
    assert set(tested) == set(FORMATS)
    assert all(callable(test) for test in tested.values())


# --------------------------------------------------------------------------- optional packages


def _pyproject_extras() -> Dict[str, List[str]]:
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras: Dict[str, List[str]] = project["optional-dependencies"]
    return {"": project["dependencies"], **extras}


def _requirement_names(requirements: List[str]) -> Set[str]:
    import re

    return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


@pytest.mark.parametrize("module", sorted(_lazy.PACKAGES))
def test_each_lazy_package_is_in_the_extra_its_error_names(module: str) -> None:
    dist, extra, _ = _lazy.PACKAGES[module]
    assert dist.lower() in _requirement_names(_pyproject_extras()[extra or ""])


@pytest.fixture
def missing_package(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Simulate that an optional package is not installed: importing it raises ImportError."""

    def hide(module: str) -> None:
        for name in list(sys.modules):
            if name == module or name.startswith(module + "."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)  # a None entry makes `import module` raise ImportError

    return hide


@pytest.mark.parametrize("module", sorted(_lazy.PACKAGES))
def test_a_missing_optional_package_names_its_extra(module: str, missing_package) -> None:  # type: ignore[no-untyped-def]
    dist, extra, _ = _lazy.PACKAGES[module]
    missing_package(module)
    with pytest.raises(MissingDependencyError) as err:
        _lazy.require(module)
    message = str(err.value)
    assert f"'{dist}'" in message
    assert (f"mlflow-tfexport[{extra}]" if extra else f"pip install {dist}") in message


def test_serving_an_onnx_variant_without_onnxruntime_names_the_onnx_extra(missing_package, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlflow_tfexport.serving.runtimes import load_runner

    missing_package("onnxruntime")
    with pytest.raises(MissingDependencyError, match=r"mlflow-tfexport\[onnx\]"):
        load_runner(str(tmp_path), {"format": "onnx", "model_file": "model.onnx", "task": "text-classification"})


def test_every_package_init_says_what_its_folder_is_for() -> None:
    """A package's ``__init__`` docstring opens with one line on the folder's job (not a placeholder)."""
    missing = []
    for module, path in MODULES.items():
        if not path.endswith("__init__.py"):
            continue
        doc = ast.get_docstring(parse(path)) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        if len(first) < 20 or "TODO" in first:
            missing.append(f"{module}: {first!r}")
    assert missing == []
