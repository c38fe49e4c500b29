#!/usr/bin/env bash
# make gpu-check: bench/gpu_check.py on a CUDA machine whose python3 has torch and transformers but
# no Beam and no network. Beam travels as wheels in .whl/ (make gpu-wheels, on a machine with
# network); they are installed into /tmp/site with the device README's line when Beam is missing.
# Arguments go to bench.gpu_check (--dry-run, --quick, --smoke, --work DIR, --time-budget S).
# PYTHON: the interpreter (default python3; make gpu-check passes .venv/bin/python where there is one).
set -u
cd "$(dirname "$0")/.." || exit
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # every model is a local folder
PY=${PYTHON:-python3}
case " $* " in *" --dry-run "*) exec "$PY" -m bench.gpu_check "$@" ;; esac  # the plan needs no Beam
if ! "$PY" -c "import apache_beam" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: Beam is not installed and .whl/ holds no wheels: run make gpu-wheels on a machine" \
             "with network, then bring .whl along (the device tool: carry [\".whl\"])" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
fi
exec "$PY" -m bench.gpu_check "$@"
