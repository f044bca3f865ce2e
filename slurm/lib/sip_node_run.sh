#!/usr/bin/env bash
# Run one srun task's command with its output appended to <prefix>-<node>.log, where <node> is
# the Slurm node name (SLURMD_NODENAME; srun's %N is the host name, which is the same for all
# nodes of a multi-slurmd test cluster). Exports SIP_SERVE_HOST (the node name) for sidecars.
# With SIP_SERVERS_PER_NODE > 1 (several sidecar servers per node), task i of a node serves on
# SIP_SERVE_PORT + i and logs to <prefix>-<node>-<i>.log (SIP_SERVE_LOG_SUFFIX names the log of a
# server started as its own step). SIP_SERVE_API_KEY_FILE: see below.
#
# --launcher: the command is a launcher such as torchrun. A signal sent to a step reaches every
# process of it, and torchrun dies of SIGUSR1 (the default action) and gives its workers only
# 30 s after SIGTERM. So SIGUSR1 is ignored here, which torchrun inherits through exec; its
# training processes install their own SIGUSR1 handler (checkpoint after the current step, then
# exit 0), and torchrun then ends as a success.
#   sip_node_run.sh [--launcher] PREFIX COMMAND [ARGS...]
set -euo pipefail
if [ "${1:-}" = "--launcher" ]; then
    trap '' USR1
    shift
fi
prefix=$1
shift
node=${SLURMD_NODENAME:-$(hostname -s)}
export SIP_SERVE_HOST=$node
log="$prefix-$node${SIP_SERVE_LOG_SUFFIX:-}.log"
if [ "${SIP_SERVERS_PER_NODE:-1}" -gt 1 ]; then
    local_id=${SLURM_LOCALID:-0}
    export SIP_SERVE_PORT=$((SIP_SERVE_PORT + local_id))
    log="$prefix-$node-$local_id.log"
fi
# A sidecar's API key comes from a file into the server's environment: `megatron-sip serve` reads
# SIP_SERVE_API_KEY, vllm serve VLLM_API_KEY. Never on a command line, where ps shows it.
if [ -n "${SIP_SERVE_API_KEY_FILE:-}" ]; then
    SIP_SERVE_API_KEY=$(<"$SIP_SERVE_API_KEY_FILE")
    export SIP_SERVE_API_KEY VLLM_API_KEY=$SIP_SERVE_API_KEY
fi
exec "$@" >>"$log" 2>&1
