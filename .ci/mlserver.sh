#!/usr/bin/env bash
# MLServer / KServe V2 route: tests/test_mlserver.py in its own virtualenv.
# MLServer 1.7.1 and mlserver-mlflow 1.7.1 need pandas < 3 (their pandas codec fails under
# pandas 3), so the venv sees the packages of CI's interpreter ($PYTHON: torch, transformers,
# onnxruntime, mlflow and this checkout, installed by .ci/run) through a .pth file placed after its
# own site-packages, and adds mlserver, mlserver-mlflow and pandas 2 on top. (A .pth rather than
# --system-site-packages, so that it also works when $PYTHON is itself a virtualenv.) Reuses the venv when it already has the right versions.
# TFEXPORT_MLSERVER_REQUIRED=1 makes a missing mlserver a collection error, never a skip.
# Usage: bash .ci/mlserver.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MLSERVER_VENV:-/tmp/mlserver-venv}"
PY="$VENV/bin/python"
BASE="${PYTHON:-python3}"
link_base() {
  # Every site-packages folder of $BASE, processed (.pth files included: the editable install) after the venv's own.
  local site
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$BASE" -c "import site, sys; dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else []); print('import site; ' + '; '.join('site.addsitedir(%r)' % d for d in dirs))" > "$site/_tfexport_base.pth"
}
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
  "$BASE" -m venv "$VENV"
  link_base
  "$PY" -m pip install -q "mlserver==1.7.1" "mlserver-mlflow==1.7.1" "pandas<3" 2>&1 | grep -v "is ignored: it is neither" || true
  ok
fi
link_base
REPO="$PWD" "$PY" -c "import os, mlflow_tfexport as m; assert os.path.realpath(m.__file__).startswith(os.path.realpath(os.environ['REPO'])), m.__file__"
"$PY" -c "import mlserver, pandas, mlflow; print('mlserver', mlserver.__version__, 'pandas', pandas.__version__, 'mlflow', mlflow.__version__)"
TFEXPORT_MLSERVER_REQUIRED=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_mlserver.py
echo "mlserver: $(( $(date +%s) - start ))s"
