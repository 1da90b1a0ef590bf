#!/usr/bin/env bash
# Open JupyterLab on the notebooks, with the project's kernel ("Python (privimage)").
#
#   scripts/lab.sh [--port N] [JUPYTER LAB OPTIONS, e.g. --no-browser]
#
# Sets up .venv like run_all.sh, serves the repository (notebooks/ and the
# executed copies in results/<profile>/notebooks/) on 127.0.0.1 only, and prints
# the URL of the executed tour, results/quick/notebooks/00_tour.ipynb.
# Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=""
ARGS=()
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [[ -n "$PORT" && ! "$PORT" =~ ^[0-9]+$ ]]; then
    echo "error: --port needs a number, got '$PORT'" >&2
    exit 2
fi

source scripts/bootstrap.sh
# The notebooks run in notebooks/: point them at the repository's data folder, as run_all.sh does.
export PRIVIMAGE_DATA="${PRIVIMAGE_DATA:-$PWD/data}"

# A free loopback port unless one was asked for; the server must not drift to
# another one, or the URL printed below would be wrong.
if [[ -z "$PORT" ]]; then
    PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
# Our own token, so the printed URL logs in (Jupyter's own URL lines carry it too).
TOKEN="$(python -c 'import secrets; print(secrets.token_hex(24))')"
TOUR="results/quick/notebooks/00_tour.ipynb"
# Containers often run as root, which Jupyter refuses unless told.
if [[ "$(id -u)" == 0 ]]; then ARGS+=(--allow-root); fi
echo "JupyterLab on http://127.0.0.1:$PORT/lab?token=$TOKEN (kernel: Python (privimage))" >&2
echo "the executed tour: http://127.0.0.1:$PORT/lab/tree/$TOUR?token=$TOKEN" >&2
exec python -m jupyter lab \
    --ServerApp.ip=127.0.0.1 --ServerApp.port="$PORT" --ServerApp.port_retries=0 \
    --IdentityProvider.token="$TOKEN" --ServerApp.root_dir="$PWD" \
    --LabApp.default_url="/lab/tree/$TOUR" \
    --MappingKernelManager.default_kernel_name=privimage \
    ${ARGS[@]+"${ARGS[@]}"}
