#!/usr/bin/env bash
# Install the system programs the slow tests start for real, only when missing:
#   - PostgreSQL (initdb, pg_ctl, postgres): the multi-user deployment test (tests/test_deployment.py)
#   - Chromium (headless): the registry UI screenshot (scripts/screenshot_registry.py)
# Quick when everything is present: it looks for the binaries first and runs apt-get only if one is missing.
# Needs root (CI runs as root on a fresh Debian machine). Usage: .ci/apt-packages.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

have_postgres() {
    # Debian's server packages do not put initdb/pg_ctl on PATH: look in /usr/lib/postgresql/*/bin too.
    command -v initdb >/dev/null 2>&1 && return 0
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ] && return 0
    done
    return 1
}

have_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql)
have_chromium || missing+=(chromium)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "apt-packages: postgresql and chromium already installed"
    exit 0
fi

echo "apt-packages: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
# postgresql's postinst creates (and starts, where an init system runs) a default cluster; the tests
# never use it: they run their own server in a temporary directory.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
have_postgres || { echo "apt-packages: PostgreSQL binaries still missing after install" >&2; exit 1; }
have_chromium || { echo "apt-packages: chromium still missing after install" >&2; exit 1; }
