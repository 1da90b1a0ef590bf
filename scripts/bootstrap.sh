#!/usr/bin/env bash
# Create .venv and install the project into it when it is missing or stale.
# Sourced by run_all.sh and run_tests.sh; "stale" means pyproject.toml changed
# since the last install (its hash is stamped inside the venv).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.privimage-install-stamp"
PYTHON_BIN="${PYTHON:-python3}"

# sha256sum on Linux, shasum on macOS.
if command -v sha256sum >/dev/null 2>&1; then
    want_stamp="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
else
    want_stamp="$(shasum -a 256 "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
fi
# A venv without a working pip (python3 -m venv failed half-way, e.g. without
# Debian's python3-venv) is made again rather than failing on every run.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "[bootstrap] $VENV has no working pip; making it again" >&2
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[bootstrap] creating $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want_stamp" ]]; then
    echo "[bootstrap] installing privimage and its dependencies into .venv (first run: several minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -e "$REPO_ROOT[test]" >&2
    # Register the kernel the notebooks name, inside the venv only.
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name privimage --display-name "Python (privimage)" >/dev/null
    echo "$want_stamp" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
