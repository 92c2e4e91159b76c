#!/usr/bin/env bash
# Set up what is missing, then play the whole life cycle on the emulators.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
PYTHONPATH=lib${PYTHONPATH:+:$PYTHONPATH} exec .venv/bin/python -m packet_lab.demo "$@"
