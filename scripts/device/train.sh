#!/usr/bin/env bash
# Run THERE, on the GPU machine the device tool lends (after scripts/device/prepare.sh here):
#
#   bash scripts/device/train.sh PLAN SECONDS      carry: [".whl", ".devdata", and what PLAN reads]
#
# trains the jobs of PLAN side by side on the one GPU, each for SECONDS, then writes each
# job's average of its best checkpoints as a small float16 .ckpt (make_checkpoint.py --slim)
# and packs it with the job's log and metrics into $OUT/JOB.tar (at most 8 jobs: the device
# tool brings back 8 files). Measuring and publishing happen here, where time costs less:
#
#   tar -xf JOB.tar -C runs/device && python scripts/make_checkpoint.py runs/device/JOB/JOB.ckpt \
#       --name NAME --recipe CONFIG --out runs/export/JOB
#
# A PLAN line: JOB NAME CONFIG AVERAGE [zoo fit overrides...]; '#' starts a comment. Each job
# runs its CONFIG with every runs/<folder> in it renamed runs/device/JOB (and a CSVLogger for
# its WandbLogger where wandb is not installed). ACCELERATOR=cpu runs the same on a machine
# without a GPU and EXTRA adds overrides to every job; a few minutes' check of a plan here:
#
#   ACCELERATOR=cpu EXTRA="--trainer.limit_train_batches=2 --trainer.limit_val_batches=1 \
#       --trainer.check_val_every_n_epoch=1 --trainer.max_epochs=2 --data.init_args.batch_size=4 \
#       --data.init_args.eval_batch_size=8 --data.init_args.num_workers=1" bash scripts/device/train.sh PLAN 600
#
# (small batches: four of the plan's jobs at their own batch sizes, in fp32 on the CPU, took
# 4.3 GB each and were killed for memory on a 24 GiB machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
plan=$1 seconds=$2 out=${OUT:-runs/device/out}
mkdir -p "$out" runs/device
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} ZOO_DATA_DIR=${ZOO_DATA_DIR:-$PWD/.devdata} WANDB_MODE=disabled PYTHONUNBUFFERED=1 \
    PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # several jobs share the GPU memory
max_time=$(printf "00:00:%02d:%02d" $((seconds / 60)) $((seconds % 60)))
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

command -v nvidia-smi >/dev/null && (sleep 240; nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv) &  # the GPU's load, mid-run
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
    timeout $((seconds + 120)) python3 -m zoo.cli fit --config "runs/device/$job.yaml" --trainer.max_time "$max_time" \
        ${ACCELERATOR:+--trainer.accelerator $ACCELERATOR} $overrides ${EXTRA:-} < /dev/null > "runs/device/$job.log" 2>&1 &
    jobs+=("$job $name $config $average $!")
done < "$plan"

for entry in "${jobs[@]}"; do  # training first, all of it: the GPU is shared until the last job ends
    read -r job name config average pid <<< "$entry"
    wait "$pid" || echo "$job: training failed or was cut short, see $job.log in $job.tar"
    ls "runs/device/$job/checkpoints" 2>/dev/null | sed "s/^/$job: kept /"  # each one's validation figure
done
for entry in "${jobs[@]}"; do  # then each job's slim average, side by side on the CPU cores
    read -r job name config average pid <<< "$entry"
    mkdir -p "runs/device/pack/$job"
    python3 scripts/make_checkpoint.py "runs/device/$job/checkpoints" --name "$name" --average "$average" \
        --dtype float16 --slim "runs/device/pack/$job/$job.ckpt" >> "runs/device/$job.log" 2>&1 \
        || echo "$job: export failed" &
done
wait
for entry in "${jobs[@]}"; do
    read -r job _ <<< "$entry"
    cp "runs/device/$job.log" "runs/device/pack/$job/"
    find "runs/device/$job" -name metrics.csv -exec cp {} "runs/device/pack/$job/" \;
    tar -cf "$out/$job.tar" -C runs/device/pack "$job"
done
# Each job's best kept validation figure, on stdout (the device tool's reply shows it even for
# a tar left behind); then, while the tars exceed what the tool brings back (64 MiB, less a
# margin), the worst job's tar of the NAME with the most tars left goes.
python3 - "$out" "${jobs[@]}" <<'PY'
import os, re, sys
out, entries = sys.argv[1], [e.split() for e in sys.argv[2:]]
best = {}
for job, name, *_ in entries:
    folder = f"runs/device/{job}/checkpoints"
    vals = [float(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
            if (m := re.search(r"-(\d+\.\d+)(-v\d+)?\.ckpt$", f))]
    best[job] = (name, min(vals) if vals else float("inf"))
    print(f"{job}: best kept validation figure {best[job][1]:.4f} ({name})")
def size(): return sum(os.path.getsize(f"{out}/{j}.tar") for j in best if os.path.exists(f"{out}/{j}.tar"))
while size() > 60 * 2**20:
    groups = {}
    for job in best:
        if os.path.exists(f"{out}/{job}.tar"):
            groups.setdefault(best[job][0], []).append(job)
    worst = max(max(groups.values(), key=len), key=lambda job: best[job][1])
    os.remove(f"{out}/{worst}.tar")
    print(f"{worst}: tar left behind, to bring back at most 60 MiB")
PY
