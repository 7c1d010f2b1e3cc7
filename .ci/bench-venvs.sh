#!/usr/bin/env bash
# The other decoders of benchmarks/bench_decoder.py, each in its own virtualenv (like .ci/mlserver.sh):
#   /tmp/genai-venv   onnxruntime-genai (its model builder and generator)
#   /tmp/optimum-venv optimum's ORTModelForCausalLM (it pins an older transformers)
# Each venv sees the packages of $PYTHON (torch, transformers, onnx, onnxruntime, this checkout) through a .pth
# file processed after its own site-packages, so only the extra packages (and the versions they pin) are
# downloaded. Reuses a venv that already imports its package. Prints the python of each venv that works.
# Usage: bash .ci/bench-venvs.sh [genai] [optimum]
set -uo pipefail
cd "$(dirname "$0")/.."
BASE="${PYTHON:-python3}"
link_base() {
  local py="$1" site
  site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$BASE" -c "import site, sys; dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else []); print('import site; ' + '; '.join('site.addsitedir(%r)' % d for d in dirs))" > "$site/_tfexport_base.pth"
}
make_venv() {  # name, module to import, pip requirements...
  local venv="${BENCH_VENV_ROOT:-/tmp}/$1-venv" module="$2"; shift 2
  local py="$venv/bin/python"
  if [ ! -x "$py" ] || ! "$py" -c "import $module" 2>/dev/null; then
    rm -rf "$venv"
    "$BASE" -m venv "$venv" && link_base "$py" && "$py" -m pip install -q "$@" 2>&1 | grep -v "is ignored" | tail -5
  fi
  link_base "$py"
  if "$py" -c "import $module" 2>/dev/null; then echo "$py"; else echo "$venv: import $module failed" >&2; return 1; fi
}
status=0
for what in "${@:-genai optimum}"; do
  for w in $what; do
    case "$w" in
      genai) make_venv genai onnxruntime_genai onnxruntime-genai || status=1 ;;
      optimum) make_venv optimum "optimum.onnxruntime" "optimum-onnx[onnxruntime]" || status=1 ;;
      *) echo "unknown venv $w (expected genai, optimum)" >&2; status=2 ;;
    esac
  done
done
exit $status
