#!/usr/bin/env bash
# Regenerate every table and figure: run the notebooks in order with papermill.
#
#   ./run_all.sh [--profile smoke|quick|paper] [--only 01,03]
#
# Writes executed notebooks to results/<profile>/notebooks/, tables (CSV and
# Markdown) to results/<profile>/tables/, figures (PNG) to results/<profile>/figures/,
# and results/<profile>/run_info.json (commit, clean tree, times, peak memory, CPUs, load).
# Trained stages are cached under cache/ (override with PRIVIMAGE_CACHE), so a
# second run only re-plots.
set -euo pipefail
cd "$(dirname "$0")"

PROFILE="quick"
ONLY=""
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a value}"; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; shift ;;
        --only) ONLY="${2:?--only needs a value like 01,03}"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see ./run_all.sh --help)" >&2; exit 2 ;;
    esac
done
case "$PROFILE" in
    smoke|quick|paper) ;;
    *) echo "error: unknown profile '$PROFILE' (choose smoke, quick or paper)" >&2; exit 2 ;;
esac

source scripts/bootstrap.sh
# The run is meant to have the machine to itself, so its OpenMP workers spin at
# barriers (libgomp's default) instead of sleeping: measured on 2 idle cores, a
# DP-SGD step of the quick profile's UNet (100 images, K = 1) took 8.8 ms per
# image with ACTIVE against 18.1 ms with PASSIVE, the default `import privimage`
# chooses for shared machines (privimage/threads.py). Set OMP_WAIT_POLICY=PASSIVE
# to run beside other heavy jobs.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-ACTIVE}"
exec python -m privimage.notebook_runner --profile "$PROFILE" ${ONLY:+--only "$ONLY"}
