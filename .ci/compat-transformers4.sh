#!/usr/bin/env bash
# Export side on the transformers 4.x stack (what Inf1's torch-neuron environment runs).
# Builds an isolated venv (no system site-packages) with torch pinned to 2.13.0 (a newer
# torch would pull a multi-GB CUDA build) and transformers 4.4x, then runs the pure-Python
# checks and the TorchScript/Neuron(stand-in) round trips through a real SQLite registry.
# Reuses the venv when it already has the right versions. Usage: bash .ci/compat-transformers4.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TF4_VENV:-/tmp/tf4}"
PY="$VENV/bin/python"
start=$(date +%s)
ok() {
  "$PY" - <<'PY' 2>/dev/null
import torch, transformers, pytest  # noqa: F401
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert transformers.__version__.startswith("4."), transformers.__version__
PY
}
if [ ! -x "$PY" ] || ! ok; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0" "transformers>=4.44,<5" pytest 2>&1 | grep -v "is ignored: it is neither" || true
  ok
fi
# This checkout, editable (a reused venv may point at another clone).
"$VENV/bin/pip" install -q -e . 2>&1 | grep -v "is ignored: it is neither" || true
REPO="$PWD" "$PY" -c "import os, mlflow_tfexport as m; assert os.path.realpath(m.__file__).startswith(os.path.realpath(os.environ['REPO'])), m.__file__"
"$PY" -c "import torch, transformers; print('compat: torch', torch.__version__, 'transformers', transformers.__version__)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_py310.py tests/test_torchscript.py tests/test_neuron.py
echo "compat-transformers4: $(( $(date +%s) - start ))s"
