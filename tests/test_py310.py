"""The serving path must run on Inf1's stack: Python 3.10, torch 1.13, no transformers.

The serving tree is walked: every file a saved model carries in ``code/`` (the
list the flavor copies, ``flavor.block.serving_files``) and the copy's
``__init__`` template. Each is parsed with Python 3.10's grammar, checked for
3.11+ standard library names, and checked not to import transformers (or
torch) at module level. When a ``python3.10`` interpreter is on the machine, it
byte-compiles them too.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
from typing import List, Optional

import pytest

from mlflow_tfexport.flavor.block import serving_files

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlflow_tfexport")
SERVING = [*serving_files(PACKAGE), os.path.join("serving", "_code_init.py")]
HEAVY = {"transformers", "torch"}
#: Standard-library names that appeared after Python 3.10.
NEWER = {("typing", "Self"), ("typing", "LiteralString"), ("typing", "Never"), ("typing", "assert_never"),
         ("typing", "reveal_type"), ("typing", "TypeVarTuple"), ("typing", "Unpack"), ("typing", "override"),
         ("datetime", "UTC"), ("enum", "StrEnum"), ("enum", "verify"), ("tomllib", None), ("wsgiref.types", None)}


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_the_serving_tree_is_what_a_model_carries() -> None:
    """The walk covers the whole serving tree and the shared modules it needs, and nothing else."""
    walked = {p for p in SERVING if p.startswith("serving" + os.sep)}
    on_disk = {os.path.relpath(p, PACKAGE) for p in glob.glob(f"{PACKAGE}/serving/**/*.py", recursive=True)}
    assert walked == on_disk
    top = sorted(p for p in SERVING if os.sep not in p)
    assert top == ["_compat.py", "_lazy.py", "constants.py", "errors.py", "formats.py", "tasks.py"]


def module_level_imports(tree: ast.Module) -> List[str]:
    """Modules imported outside any function or class body (including under try/if at top level)."""
    found: List[str] = []
    stack: List[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            stack += [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]
            if isinstance(node, ast.Try):
                for handler in node.handlers:
                    stack += handler.body
    return found


@pytest.mark.parametrize("relpath", SERVING)
def test_serving_module_is_python310_and_imports_no_heavy_package(relpath: str) -> None:
    src = read(os.path.join(PACKAGE, relpath))
    tree = ast.parse(src, filename=relpath, feature_version=(3, 10))
    heavy = [m for m in module_level_imports(tree) if m.split(".")[0] in HEAVY]
    assert not heavy, f"{relpath} imports {heavy} at module level; import them inside the function that needs them"
    for node in ast.walk(tree):
        assert not isinstance(node, getattr(ast, "TryStar", ())), f"{relpath}: except* needs Python 3.11"
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                assert (node.module, alias.name) not in NEWER, f"{relpath}: {node.module}.{alias.name} is 3.11+"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert (alias.name, None) not in NEWER, f"{relpath}: {alias.name} is 3.11+"


def python310() -> Optional[str]:
    """A working python3.10 (a pyenv shim on PATH may exist without the version being selected)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    candidates += [p for p in [shutil.which("python3.10")] if p]
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 10)":
            return candidate
    return None


PYTHON310 = python310()


@pytest.mark.integration
@pytest.mark.skipif(PYTHON310 is None, reason="no python3.10 interpreter on this machine")
def test_serving_modules_compile_with_a_real_python310(tmp_path: object) -> None:
    files = [os.path.join(PACKAGE, p) for p in SERVING]
    code = (
        "import py_compile, sys\n"
        "for f in sys.argv[1:]:\n"
        "    py_compile.compile(f, cfile=f + '.310.pyc', doraise=True)\n"
    )
    staged = []
    for f in files:  # compile copies, so nothing is written into the package
        dst = os.path.join(str(tmp_path), os.path.relpath(f, PACKAGE).replace(os.sep, "_"))
        shutil.copyfile(f, dst)
        staged.append(dst)
    assert PYTHON310 is not None
    out = subprocess.run([PYTHON310, "-c", code, *staged], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
