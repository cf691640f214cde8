# Shared launcher logic, sourced by the examples/*.sh scripts.
#
# Outside a launcher it starts torchrun with NPROC_PER_NODE (default 1), NNODES (1), NODE_RANK (0),
# MASTER_ADDR (127.0.0.1) and MASTER_PORT (29500). Already under torchrun (LOCAL_RANK set) or inside
# an srun step with one task per process (SLURM_STEP_ID set), it runs the trainer directly: the
# ranks then come from torchrun's or SLURM's variables.
#
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 120): seconds torchrun waits, after passing a SIGTERM on
# to the ranks, before it kills them; a step and its checkpoint must fit in it. The trainer reads it
# too and warns when its steps and saves take longer (docs/OPERATIONS.md, "Preemption").
launch() {
  local module=$1
  shift
  local python=${PYTHON:-python}
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}
  if [[ -n "${LOCAL_RANK:-}" || -n "${SLURM_STEP_ID:-}" ]]; then
    exec "$python" -m "$module" "$@"
  fi
  exec "$python" -m torch.distributed.run \
    --nproc-per-node "${NPROC_PER_NODE:-1}" \
    --nnodes "${NNODES:-1}" \
    --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" \
    --master-port "${MASTER_PORT:-29500}" \
    --shutdown-timeout "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" \
    -m "$module" "$@"
}
