#!/usr/bin/env bash
# Run THERE, on the GPU machine the device tool lends (after scripts/device/prepare.sh here):
#
#   bash scripts/device/train.sh PLAN SECONDS      carry: [".whl", ".devdata"]
#
# trains the jobs of PLAN side by side on the one GPU, each for SECONDS, then publishes each
# job's average of its best checkpoints with scripts/make_checkpoint.py (measured with the
# stored float16 weights, on that machine's CPU) and packs the folder into $OUT/JOB.tar,
# with the job's log as $OUT/JOB.log. Unpack here with `tar -xf JOB.tar -C runs/`.
#
# A PLAN line: JOB NAME CONFIG AVERAGE [zoo fit overrides...]; '#' starts a comment. Each job
# runs its CONFIG with every runs/<folder> in it renamed runs/device/JOB (and a CSVLogger for
# its WandbLogger where wandb is not installed). ACCELERATOR=cpu
# runs the same on a machine without a GPU (scripts/device/smoke.plan: a minute's check).
set -uo pipefail
cd "$(dirname "$0")/../.."
plan=$1 seconds=$2 out=${OUT:-runs/device/out}
mkdir -p "$out" runs/device
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} ZOO_DATA_DIR=${ZOO_DATA_DIR:-$PWD/.devdata} WANDB_MODE=disabled PYTHONUNBUFFERED=1
max_time=$(printf "00:00:%02d:%02d" $((seconds / 60)) $((seconds % 60)))
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

csv_logger=0
python3 -c "import wandb" 2>/dev/null || csv_logger=1  # the GPU image has no wandb: log to CSV files instead
jobs=()
while read -r job name config average overrides; do
    [[ -z "$job" || "$job" == \#* ]] && continue
    sed "s#runs/[A-Za-z0-9_.]*#runs/device/$job#g" "$config" > "runs/device/$job.yaml"
    if ((csv_logger)); then
        sed -i -e "s/loggers.WandbLogger/loggers.CSVLogger/" -e "/^ *project: /d" "runs/device/$job.yaml"
    fi
    # shellcheck disable=SC2086  # the overrides are words
    python3 -m zoo.cli fit --config "runs/device/$job.yaml" --trainer.max_time "$max_time" \
        ${ACCELERATOR:+--trainer.accelerator $ACCELERATOR} $overrides < /dev/null > "$out/$job.log" 2>&1 &
    jobs+=("$job $name $config $average $!")
done < "$plan"

for entry in "${jobs[@]}"; do
    read -r job name config average pid <<< "$entry"
    if ! wait "$pid"; then echo "$job: training failed, see $job.log"; tail -5 "$out/$job.log"; continue; fi
    python3 scripts/make_checkpoint.py "runs/device/$job/checkpoints" --name "$name" --average "$average" \
        --dtype float16 --recipe "$config" --out "runs/device/export/$job" >> "$out/$job.log" 2>&1 \
        && tar -cf "$out/$job.tar" -C runs/device/export "$job" \
        && echo "$job: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics'])" "runs/device/export/$job/config.json")" \
        || { echo "$job: export failed, see $job.log"; tail -5 "$out/$job.log"; }
done
