# The body of the *.sbatch scripts, sourced by them after they set their defaults (CONFIG,
# RUN_NAME): runs examples/slurm/srun_task.sh on every node of the allocation.
# Variables (export before sbatch):
#   CONFIG       the run's YAML (each script has its default)
#   LAUNCH_MODE  node (one srun task per node running torchrun) or gpu (one task per GPU)
#   GPUS_PER_NODE, VENV (a virtual environment to activate) or CONTAINER (an image for srun's
#   --container-image, pyxis), LOG_DIR, CKPT_DIR (train.save_dir), MASTER_PORT,
#   MODULE (the trainer, megatron_omni.cli.train),
#   REPO (the repository; the scripts default to the submit directory, because sbatch runs a spool
#   copy of the script, not the file in the repository)
# Relative paths (CONFIG, LOG_DIR, CKPT_DIR) are taken from the repository root.
# Preemption and time limits: SLURM sends SIGTERM (--signal) before killing the job; the trainer
# then checkpoints and exits, and a requeued job resumes from CKPT_DIR's latest complete checkpoint.
# Extra arguments of sbatch (section.key=value overrides) are passed to the trainer.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

RUN_NAME=${SLURM_JOB_NAME:-$RUN_NAME}
LAUNCH_MODE=${LAUNCH_MODE:-node}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
LOG_DIR=${LOG_DIR:-logs}
CKPT_DIR=${CKPT_DIR:-runs/$RUN_NAME/checkpoints}
MODULE=${MODULE:-megatron_omni.cli.train}
mkdir -p "$LOG_DIR"

export LAUNCH_MODE NPROC_PER_NODE=$GPUS_PER_NODE
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-29500}
if [[ -n "${VENV:-}" ]]; then source "$VENV/bin/activate"; fi

srun_args=(--kill-on-bad-exit=1)
if [[ "$LAUNCH_MODE" == gpu ]]; then
  srun_args+=(--ntasks-per-node="$GPUS_PER_NODE" --gpus-per-task=1)
else
  srun_args+=(--ntasks-per-node=1)
fi
if [[ -n "${CONTAINER:-}" ]]; then srun_args+=(--container-image="$CONTAINER" --container-workdir="$REPO"); fi

srun "${srun_args[@]}" "$REPO/examples/slurm/srun_task.sh" "$MODULE" \
  --config "$CONFIG" output_dir="$LOG_DIR/$RUN_NAME" train.save_dir="$CKPT_DIR" "$@"
