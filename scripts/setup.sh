#!/usr/bin/env bash
# Idempotent development set-up on Debian: system tools, then .venv with the project and its
# dev extras. Used by demo.sh, test.sh and .ci/run; quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if [ "$(id -u)" = 0 ]; then
    command -v iptables-restore >/dev/null 2>&1 || need_apt+=(iptables)
    command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
    command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)  # the VNM tests run it as oneadmin
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need_apt[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing ${need_apt[*]} and cannot apt-get them (not root?)" >&2
    fi
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: creating .venv with the project and its dev extras" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -e '^WARNING: Location' -e '^\s*$' >&2 || true
    .venv/bin/python -c 'import pyone, lxml, requests, yaml, pytest, packet_provider'
    touch "$stamp"
fi
