#!/usr/bin/env bash
# bids_qc on SLURM: one participant per array task, then one group job.
#
#   cluster/slurm_array.sh BIDS_DIR OUTPUT_DIR WORK_ROOT [bids_qc options...]
#
# Run it on the submit host. It
#   1. indexes the dataset once into WORK_ROOT/bids_db (a pybids database) and lists the
#      participants the options select into WORK_ROOT/participants.txt;
#   2. submits an array job, task N processing line N of that list with its own work
#      directory WORK_ROOT/work/sub-<label>, all tasks loading the shared database;
#   3. submits the group job, which starts only when every task succeeded (afterok).
# It prints the two job ids ("array job ID", "group job ID") and returns.
#
# Environment (all optional):
#   BIDS_QC         the bids_qc command (default: bids_qc). With a container, e.g.
#                   BIDS_QC="apptainer run --cleanenv -B /data:/data:ro -B /scratch bids_qc.sif"
#   BIDS_QC_PYTHON  a python with bids_qc, for step 1 (default: python3). With a container,
#                   e.g. BIDS_QC_PYTHON="apptainer exec --cleanenv -B ... bids_qc.sif python3"
#   SBATCH_ARGS     sbatch options for every job, e.g. "--partition=short --time=01:00:00
#                   --mem=8G --cpus-per-task=2" (each task gives bids_qc --nprocs from
#                   SLURM_CPUS_PER_TASK)
#   ARRAY_LIMIT     at most this many tasks at once (sbatch --array=1-N%LIMIT)
# OUTPUT_DIR, WORK_ROOT and BIDS_DIR must be on a filesystem every node sees. Many tasks
# write into OUTPUT_DIR at once: bids_qc writes every file there atomically.
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

mode=submit
case "${1:-}" in
    --task|--group) mode="${1#--}"; shift ;;
esac
[ "$#" -ge 3 ] || usage
bids="$(realpath "$1")"
out="$(realpath -m "$2")"
work_root="$(realpath -m "$3")"
shift 3
db="$work_root/bids_db"
list="$work_root/participants.txt"
read -r -a bids_qc <<< "${BIDS_QC:-bids_qc}"

case "$mode" in
task)  # one array task: line SLURM_ARRAY_TASK_ID of the participant list
    label="$(sed -n "${SLURM_ARRAY_TASK_ID:?not an array task}p" "$list")"
    [ -n "$label" ] || { echo "no participant on line $SLURM_ARRAY_TASK_ID of $list" >&2; exit 64; }
    # The options come first: for an option given twice the last wins, so this task's
    # label, database and work directory override a --participant-label list in them.
    exec "${bids_qc[@]}" "$bids" "$out" participant --nprocs "${SLURM_CPUS_PER_TASK:-1}" \
        "$@" --participant-label "$label" --bids-database-dir "$db" \
        -w "$work_root/work/sub-$label"
    ;;
group)
    exec "${bids_qc[@]}" "$bids" "$out" group "$@"
    ;;
esac

# Submit mode. Step 1: one index, one participant list.
mkdir -p "$work_root/logs" "$work_root/work"
read -r -a python <<< "${BIDS_QC_PYTHON:-python3}"
"${python[@]}" -m bids_qc.cluster "$bids" "$out" participant --bids-database-dir "$db" "$@" \
    > "$list.tmp"
mv "$list.tmp" "$list"
n="$(grep -c . "$list" || true)"
[ "$n" -gt 0 ] || { echo "no participant selected" >&2; exit 18; }
echo "indexed $bids into $db: $n participant(s)"

read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
script="$(realpath "$0")"
array="1-$n${ARRAY_LIMIT:+%$ARRAY_LIMIT}"
array_id="$(sbatch --parsable "${sbatch_args[@]}" --job-name=bids_qc-participant \
    --array="$array" --output="$work_root/logs/participant-%A_%a.out" \
    "$script" --task "$bids" "$out" "$work_root" "$@")"
array_id="${array_id%%;*}"
echo "array job $array_id"
# The group level takes no selection options: it gathers every participant's results.
group_id="$(sbatch --parsable "${sbatch_args[@]}" --job-name=bids_qc-group \
    --dependency="afterok:$array_id" --output="$work_root/logs/group-%j.out" \
    "$script" --group "$bids" "$out" "$work_root")"
echo "group job ${group_id%%;*}"
