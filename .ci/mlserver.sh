#!/usr/bin/env bash
# MLServer / KServe V2 route: tests/test_mlserver.py in its own virtualenv.
# MLServer 1.7.1 and mlserver-mlflow 1.7.1 need pandas < 3 (their pandas codec fails under
# pandas 3), so the venv sees the project's packages (--system-site-packages: torch, transformers,
# onnxruntime, mlflow and this checkout, installed by .ci/run) and adds mlserver, mlserver-mlflow
# and pandas 2 on top. Reuses the venv when it already has the right versions.
# TFEXPORT_MLSERVER_REQUIRED=1 makes a missing mlserver a collection error, never a skip.
# Usage: bash .ci/mlserver.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MLSERVER_VENV:-/tmp/mlserver-venv}"
PY="$VENV/bin/python"
start=$(date +%s)
ok() {
  "$PY" - <<'PY' 2>/dev/null
import mlserver, mlserver_mlflow, pandas, pytest  # noqa: F401
assert mlserver.__version__ == "1.7.1", mlserver.__version__
assert pandas.__version__.startswith("2."), pandas.__version__
PY
}
if [ ! -x "$PY" ] || ! ok; then
  rm -rf "$VENV"
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q "mlserver==1.7.1" "mlserver-mlflow==1.7.1" "pandas<3" 2>&1 | grep -v "is ignored: it is neither" || true
  ok
fi
REPO="$PWD" "$PY" -c "import os, mlflow_tfexport as m; assert os.path.realpath(m.__file__).startswith(os.path.realpath(os.environ['REPO'])), m.__file__"
"$PY" -c "import mlserver, pandas, mlflow; print('mlserver', mlserver.__version__, 'pandas', pandas.__version__, 'mlflow', mlflow.__version__)"
TFEXPORT_MLSERVER_REQUIRED=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_mlserver.py
echo "mlserver: $(( $(date +%s) - start ))s"
