#!/usr/bin/env bash
# One Ray node of a SLURM job: search.sbatch runs it through `srun`, one task per node.
#   ray-node.sh head     (on the batch host; EM_RAY_PORT and EM_RAY_DASHBOARD_PORT chosen by the batch script)
#   ray-node.sh worker   (on every further node; joins EM_RAY_ADDRESS)
# Every port this node listens on is picked free on this node, and its files go under the job's own temp dir
# (EM_RAY_TMP), so two jobs sharing a node never collide. CPUs and GPUs come from SLURM's allocation of this task.
# `ray start --block` stays in the foreground: when the step is signalled (the search ended, or scancel),
# SLURM stops this node's Ray processes with it.
set -euo pipefail

role=${1:?usage: ray-node.sh head|worker}
free_port() { "$EM_SEARCH_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

args=(
  --block --disable-usage-stats
  --temp-dir="$EM_RAY_TMP"
  --node-ip-address="$(hostname --ip-address | awk '{print $1}')"
  --node-name="${SLURMD_NODENAME:-$(hostname)}"
  --num-cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
  --num-gpus="${SLURM_GPUS_ON_NODE:-0}"
  --metrics-export-port="$(free_port)"
  --dashboard-agent-listen-port="$(free_port)"
  --dashboard-agent-grpc-port="$(free_port)"
  --runtime-env-agent-port="$(free_port)"
)
if [[ $role == head ]]; then
  args+=(--head --port="$EM_RAY_PORT" --include-dashboard=true --dashboard-host=0.0.0.0
         --dashboard-port="$EM_RAY_DASHBOARD_PORT" --ray-client-server-port="$(free_port)")
else
  args+=(--address="$EM_RAY_ADDRESS")
fi
# On SIGTERM Ray drains a node for up to 30 s before stopping it (for Serve replicas); a search's node is stopped
# only once its search has ended or been cancelled, and SLURM kills what is left after KillWait (often 30 s).
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
exec "$EM_RAY" start "${args[@]}"
