#!/usr/bin/env bash
# One srun task of a multi-node job (called by the *.sbatch scripts).
#   LAUNCH_MODE=node  one task per node: runs torchrun with NPROC_PER_NODE workers; the rendezvous
#                     is MASTER_ADDR:MASTER_PORT on the first node, node rank = SLURM_NODEID.
#   LAUNCH_MODE=gpu   one task per GPU: runs the module directly; ranks come from SLURM_PROCID,
#                     SLURM_NTASKS and SLURM_LOCALID, the master from MASTER_ADDR or the node list.
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 240, below the sbatch scripts' --signal=TERM@300 lead):
# seconds torchrun waits after passing SIGTERM on before it kills the ranks; the trainer warns when
# a step and its checkpoint take longer.
# Usage: srun_task.sh MODULE [ARGS...]
set -euo pipefail
module=$1
shift
python=${PYTHON:-python}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}
case "${LAUNCH_MODE:-node}" in
  node)
    exec "$python" -m torch.distributed.run \
      --nnodes "${SLURM_NNODES:?}" --node-rank "${SLURM_NODEID:?}" \
      --nproc-per-node "${NPROC_PER_NODE:?}" \
      --master-addr "${MASTER_ADDR:?}" --master-port "${MASTER_PORT:-29500}" \
      --shutdown-timeout "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" \
      -m "$module" "$@"
    ;;
  gpu)
    exec "$python" -m "$module" "$@"
    ;;
  *)
    echo "LAUNCH_MODE must be 'node' or 'gpu', got '${LAUNCH_MODE}'" >&2
    exit 2
    ;;
esac
