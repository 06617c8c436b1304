#!/usr/bin/env bash
# The prepared GPU measurement for one short device lease (one GPU, ~10 minutes of it): GPT-2-XL
# at ZeRO-2 in bf16, micro-batch 16 x 1024, the baseline of BENCHMARKS.md and then the ways past
# its step's fixed cost one flag at a time, each in its own process (a failure costs only its own
# line). Every line of bench/gpu_mfu.py carries the MFU as `mfu ratio`; the summary at the end
# prints each variant's tokens/s against the baseline's from this same run as `ratio`.
#
#   bash bench/gpu_session.sh            # writes JSON per variant under $OUT (or ./gpu-session)
#   BUDGET_S=420 bash bench/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-session}"
budget="${BUDGET_S:-480}"   # stop starting variants after this many seconds
per_run="${PER_RUN_S:-240}"  # one variant's limit (GPT-2-XL's compile takes minutes)
python="${PYTHON:-python3}"
# GPU_MFU_ARGS replaces these (e.g. "--device cpu --preset tiny --micro 2 --seq 32" to try it here)
read -r -a common <<< "${GPU_MFU_ARGS:---preset gpt2-xl --zero 2 --micro 16 --seq 1024 --warmup 2}"
variants=(
  "baseline|--steps 8"
  "accum4|--steps 3 --accum 4"
  "accum4_nocheck|--steps 3 --accum 4 --no-overflow-check"
  "accum4_nocheck_compiled|--steps 3 --accum 4 --no-overflow-check --compile"
)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi here"
"$python" -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
start=$SECONDS
for entry in "${variants[@]}"; do
  name="${entry%%|*}"
  flags="${entry#*|}"
  if (( SECONDS - start > budget )); then
    echo "$name: not run, the budget of ${budget} s is spent"
    continue
  fi
  mkdir -p "$out/$name"
  echo "== $name: ${common[*]} $flags"
  # shellcheck disable=SC2086  # the flags are words
  timeout "$per_run" "$python" bench/gpu_mfu.py "${common[@]}" $flags --out "$out/$name" \
    > "$out/$name/log.txt" 2>&1
  rc=$?
  grep -E "mfu ratio|compile and first step|Error|error:" "$out/$name/log.txt" | tail -5
  (( rc == 0 )) || echo "$name: exit $rc (log: $out/$name/log.txt)"
done
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path

runs = {}
for path in sorted(Path(sys.argv[1]).glob("*/gpu_mfu.json")):
    runs[path.parent.name] = json.loads(path.read_text())["results"][0]
base = runs.get("baseline")
for name, r in runs.items():
    if name == "baseline" or not base:
        continue
    print(
        f"{name} vs baseline: {r['tokens_per_s']:,.0f} vs {base['tokens_per_s']:,.0f} tok/s, "
        f"ratio {r['tokens_per_s'] / base['tokens_per_s']:.3f} (mfu {r['mfu']:.3f} vs {base['mfu']:.3f})"
    )
EOF
