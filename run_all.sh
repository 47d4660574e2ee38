#!/usr/bin/env bash
# Regenerate the paper's Figures 1-6 and check their numbers against the stored references.
#
#   ./run_all.sh [--smoke] [--check | --record]
#
#   (default)  paper scale: the Caffe-zoo AlexNet, GoogLeNet and VGG16 at full resolution,
#              stride 1 (hours per image on a GPU; needs the zoo weights, fetched here).
#   --smoke    offline reduced scale on the CPU in a few minutes: the real Caffe LeNet on the
#              bundled digits (figures 1-4) and narrow random-weight zoo architectures with a
#              coarse stride (figures 5-6), so that every code path of every figure runs.
#   --check    (default) compare with figures/reference/<scale>/*.npz
#   --record   rewrite the references of that scale with this run's results
#
#   --force / --reuse-cache   recompute everything from an empty cache / reuse cached
#              computations whose parameters match (defaults: --force at smoke scale, so that
#              a check tests the current code; --reuse-cache at paper scale: hours of work)
#   --figures fig1,fig3       run a subset
#   --workers N | --scheduler ADDRESS   compute the explanations on a Dask cluster: a local one
#              of N worker processes, or a running one (needs pip install -e ".[cluster]");
#              the numbers are those of a run in one process
#
# Creates .venv (python3 -m venv; pip install -e .) unless a working one is already there.
# Figures go to figures/<scale>/figN.{png,pdf,json}; computations are cached in
# figures/cache/<scale>/ (keyed on their parameters; safe to delete). figures/smoke/ and the
# caches are ignored by git: a smoke run, whose records hold its timings and platform, leaves
# the checkout clean.
#
# Verdicts: PASS (within tolerance: max |result - reference| <= 1e-3 x max |reference| per
# map, identical predicted classes; see reproduce/common.py TOLERANCE for why), FAIL, ERROR
# (the script crashed), UNVERIFIED (no reference recorded: never a pass), RECORDED.
# Exit status: 0 all passed or recorded; 1 a figure failed; 2 the zoo weights could not be
# fetched (offline: use --smoke); 3 nothing failed but some figure is UNVERIFIED.
set -euo pipefail
cd "$(dirname "$0")"
export MPLBACKEND=Agg
# Ctrl-C: the Python scripts stop cleanly (their checkpoints saved) without a line of their
# own; this script prints the one line and exits with status 130.
export PREDDIFF_REPRODUCE_CHILD=1
trap 'echo "run_all.sh: interrupted" >&2; exit 130' INT

scale=paper
mode=--check
extra=()
cluster=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) scale=smoke ;;
        --paper) scale=paper ;;
        --check) mode=--check ;;
        --record) mode=--record ;;
        --force|--reuse-cache) extra+=("$1") ;;
        --figures)
            if [ $# -lt 2 ] || [ -z "$2" ]; then
                echo "run_all.sh: --figures needs a comma-separated list, e.g. --figures fig1,fig3" >&2
                exit 64
            fi
            extra+=(--figures "$2"); shift ;;
        --workers|--scheduler)
            if [ $# -lt 2 ] || [ -z "$2" ]; then
                echo "run_all.sh: $1 needs a value, e.g. --workers 2 or --scheduler tcp://HOST:8786" >&2
                exit 64
            fi
            cluster+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;  # the header comment
        *) echo "run_all.sh: unknown option $1 (try --help)" >&2; exit 64 ;;
    esac
    shift
done

# A virtualenv with this checkout installed: reuse it when it imports, else (re)install.
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python - <<'PY' 2>/dev/null
import pathlib, preddiff, numpy, scipy, onnx, onnxruntime, skimage, matplotlib, pooch, tqdm
src = pathlib.Path("src").resolve()
assert src in pathlib.Path(preddiff.__file__).resolve().parents
PY
then
    echo "== installing preddiff into .venv (pip install -e .)"
    python -m pip install --quiet -e .
fi
if [ ${#cluster[@]} -gt 0 ] && ! python -c "import distributed" 2>/dev/null; then
    echo "== installing the cluster extra into .venv (pip install -e \".[cluster]\")"
    python -m pip install --quiet -e ".[cluster]"
fi

start=$(date +%s)
status=0
# every script through reproduce/launch.py: Ctrl-C even during its imports is one line
python -m reproduce.launch reproduce.check --scale "$scale" "$mode" ${extra[@]+"${extra[@]}"} \
    ${cluster[@]+"${cluster[@]}"} || status=$?
# Quantitative evaluation (deletion/insertion curves, randomisation check) on the real LeNet
# digits, and on the zoo nets whose weights are present. Skipped when the figures stopped at
# the fetch (status 2) or crashed.
if [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; then
    echo "== quantitative evaluation (reproduce/evaluation.py, ${scale} scale)"
    eval_args=(--scale "$scale" --no-progress ${cluster[@]+"${cluster[@]}"})
    [ "$scale" = smoke ] && eval_args+=(--force)
    python -m reproduce.launch reproduce.evaluation "${eval_args[@]}" || status=1
fi
echo "run_all.sh: ${scale} scale, $(( $(date +%s) - start )) s, exit status ${status}"
exit "$status"
