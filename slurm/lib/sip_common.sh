# shellcheck shell=bash
# Functions shared by the sbatch scripts in slurm/: logging, environment set-up (modules, a
# setup script, containers), sidecar servers and their health gate. Sourced, never executed.
#
# Every function reads its settings from arguments or from SIP_* variables documented in
# docs/cluster.md; none of them exits the calling script (they return non-zero instead).

# The default sidecar command: TensorRT-LLM's OpenAI-compatible server, one per node. Single
# quotes on purpose: each node's shell expands the SIP_SERVE_* variables (see sip_start_sidecars).
# shellcheck disable=SC2016,SC2034  # read by the sourcing scripts
SIP_DEFAULT_SERVE_CMD='trtllm-serve "$SIP_SERVE_MODEL" --host 0.0.0.0 --port "$SIP_SERVE_PORT" --backend pytorch --tp_size "$SIP_SERVE_TP" ${SIP_SERVE_CONFIG:+--extra_llm_api_options "$SIP_SERVE_CONFIG"}'

# One line on the batch log: time, job id, message.
sip_log() {
    printf '%s sip[%s]: %s\n' "$(date +%H:%M:%S)" "${SLURM_JOB_ID:-local}" "$*"
}

sip_die() {
    sip_log "error: $*" >&2
    exit 1
}

# Load environment modules (SIP_MODULES, space-separated) and source SIP_SETUP_SCRIPT (e.g. a
# venv's activate). Both optional: a container image usually replaces them.
sip_setup_environment() {
    if [ -n "${SIP_MODULES:-}" ]; then
        if ! command -v module >/dev/null 2>&1; then
            sip_log "error: SIP_MODULES is set but the 'module' command is not available"
            return 1
        fi
        local -a modules
        read -r -a modules <<<"$SIP_MODULES"
        module load "${modules[@]}" || return 1
        sip_log "loaded modules: ${modules[*]}"
    fi
    if [ -n "${SIP_SETUP_SCRIPT:-}" ]; then
        [ -f "$SIP_SETUP_SCRIPT" ] || { sip_log "error: SIP_SETUP_SCRIPT=$SIP_SETUP_SCRIPT not found"; return 1; }
        # shellcheck disable=SC1090  # a user-supplied file
        source "$SIP_SETUP_SCRIPT" || return 1
        sip_log "sourced $SIP_SETUP_SCRIPT"
    fi
}

# srun options that run a step inside a container through pyxis, one per line; nothing when the
# image is empty (the step then runs on the host, with modules or a venv). The container sees
# SIP_CONTAINER_MOUNTS (pyxis syntax SRC:DST[,SRC:DST...]); by default the repository and the
# submit folder, where configs and logs live.
#   $1 image (e.g. nvcr.io#nvidia/nemo:25.09), empty for none
sip_container_args() {
    local image=$1 mounts=${SIP_CONTAINER_MOUNTS:-}
    [ -n "$image" ] || return 0
    if [ -z "$mounts" ]; then
        mounts="$SIP_REPO:$SIP_REPO"
        if [ "$PWD" != "$SIP_REPO" ]; then
            mounts+=",$PWD:$PWD"
        fi
    fi
    printf '%s\n' "--container-image=$image" "--container-workdir=$PWD" "--container-mounts=$mounts"
}

# The value of a per-component Slurm variable: NAME_HET_GROUP_<index> in a het job; plain NAME
# for component 0 of an ordinary job (submitted without sidecar components).
#   $1 variable name (e.g. SLURM_JOB_NODELIST)  $2 component index
sip_group_var() {
    local name=$1 group=$2 var
    if [ -n "${SLURM_HET_SIZE:-}" ]; then
        var="${name}_HET_GROUP_$group"
    elif [ "$group" -eq 0 ]; then
        var=$name
    else
        return 1
    fi
    [ -n "${!var:-}" ] || return 1
    printf '%s\n' "${!var}"
}

# Number of components: SLURM_HET_SIZE in a het job, 1 otherwise.
sip_num_groups() {
    echo "${SLURM_HET_SIZE:-1}"
}

# srun's option that places a step on one component (nothing in an ordinary job).
#   $1 component index
sip_het_group_arg() {
    if [ -n "${SLURM_HET_SIZE:-}" ]; then
        echo "--het-group=$1"
    fi
}

# The host names of one component, one per line.
#   $1 component index
sip_group_hosts() {
    local nodelist
    nodelist=$(sip_group_var SLURM_JOB_NODELIST "$1") || return 1
    scontrol show hostnames "$nodelist"
}

# GPUs per node of one component (0 when it asked for none). Slurm spells the request as it was
# given: "8", "h100:8" or unset.
#   $1 component index
sip_group_gpus_per_node() {
    local value
    value=$(sip_group_var SLURM_GPUS_PER_NODE "$1") || value=0
    value=${value##*:}
    case "$value" in
        '' | *[!0-9]*) echo 0 ;;
        *) echo "$value" ;;
    esac
}

# CPUs per node of one component, from SLURM_JOB_CPUS_PER_NODE ("64(x2)" or "64,32").
#   $1 component index
sip_group_cpus_per_node() {
    local value
    value=$(sip_group_var SLURM_JOB_CPUS_PER_NODE "$1") || value=1
    value=${value%%(*}
    value=${value%%,*}
    echo "${value:-1}"
}

# The HTTP status of GET $1 within 5 s (000 when nothing answered). With $2, a file holding an API
# key, the key is sent as a bearer token; it reaches curl through a file descriptor and Python
# through its environment, never a command line (visible in ps).
sip_http_status() {
    local url=$1 key_file=${2:-} key=""
    if [ -n "$key_file" ]; then
        key=$(<"$key_file")
    fi
    if command -v curl >/dev/null 2>&1; then
        local -a auth=()
        if [ -n "$key" ]; then
            auth=(--header @<(printf 'Authorization: Bearer %s\n' "$key"))
        fi
        curl --silent --max-time 5 --output /dev/null --write-out '%{http_code}' "${auth[@]}" "$url" || true
    else
        SIP_PROBE_KEY=$key "${SIP_PYTHON:-python3}" -c '
import os, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("SIP_PROBE_KEY"):
    request.add_header("Authorization", "Bearer " + os.environ["SIP_PROBE_KEY"])
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception:
    print("000")' "$url" 2>/dev/null || echo 000
    fi
}

# Exit status 0 when the server at base URL $1 is ready: GET /health answers 200, or, for servers
# without a /health route (404, e.g. llama-cpp-python's), GET /v1/models answers 200.
#   $1 base URL  $2 optional API key file (for /v1/models)
sip_server_ready() {
    local status
    status=$(sip_http_status "$1/health")
    if [ "$status" = 404 ]; then
        status=$(sip_http_status "$1/v1/models" "${2:-}")
    fi
    [ "$status" = 200 ]
}

# Start the sidecar servers of one het-job component in the background:
# `per_node` servers on every node of the component, server i of a node on port <port> + i with
# 1/per_node of the node's GPUs (an 8B judge: 8 servers of TP 1 per node; a 120B one: 1 of TP 8).
# Plainly, all servers are one srun step with a task per server. With a launcher (TensorRT-LLM's
# `trtllm-llmapi-launch` for multi-GPU trtllm-serve), each server is an srun step of its own with
# one MPI task per GPU (`srun --mpi=$SIP_SRUN_MPI`, pmix by default): the launcher runs the command
# on rank 0 and makes the other ranks its workers, which is how TensorRT-LLM documents
# trtllm-serve under SLURM (examples/llm-api/llm_mgmn_trtllm_serve.sh upstream).
# The server command is a bash string run by each server's task with these variables set:
#   SIP_SERVE_MODEL  model path or name        SIP_SERVE_PORT    port to listen on
#   SIP_SERVE_TP     tensor-parallel size      SIP_SERVE_CONFIG  extra config YAML (may be empty)
#   SIP_SERVE_HOST   this node's name
# so that e.g. 'trtllm-serve "$SIP_SERVE_MODEL" --port "$SIP_SERVE_PORT"' expands per server.
# Each server logs to <log folder>/<role>-<node>.log (-<node>-<i>.log with several per node).
# With a key file, each server's environment gets the key as SIP_SERVE_API_KEY (read by
# `megatron-sip serve`) and VLLM_API_KEY (read by vllm serve), loaded by sip_node_run.sh from the
# file: the key never appears on a command line.
# Sets SIP_SIDECAR_PIDS to the sruns' PIDs and SIP_SIDECAR_URLS to the endpoints, space-separated.
#   $1 role (judge|rewriter)  $2 component index  $3 command  $4 model  $5 port  $6 TP size
#   $7 extra config file  $8 container image  $9 log folder  $10 servers per node
#   $11 launcher (empty: none)  $12 API key file (empty: none)
sip_start_sidecars() {
    local role=$1 group=$2 command=$3 model=$4 port=$5 tp=$6 config=$7 image=$8 log_dir=$9 per_node=${10:-1}
    local launcher=${11:-} key_file=${12:-}
    local -a hosts container gpu_args=()
    mapfile -t hosts < <(sip_group_hosts "$group")
    [ "${#hosts[@]}" -gt 0 ] || { sip_log "error: het-job component $group has no nodes"; return 1; }
    mapfile -t container < <(sip_container_args "$image")
    local gpus cpus host index
    gpus=$(sip_group_gpus_per_node "$group")
    cpus=$(sip_group_cpus_per_node "$group")
    if [ "$per_node" -gt 1 ] && [ "$gpus" -gt 0 ]; then
        if [ $((gpus % per_node)) -ne 0 ]; then
            sip_log "error: $per_node $role servers per node do not divide the node's $gpus GPUs"
            return 1
        fi
        gpu_args=("--gpus-per-task=$((gpus / per_node))")
    fi
    SIP_SIDECAR_URLS=""
    for host in "${hosts[@]}"; do
        for ((index = 0; index < per_node; index++)); do
            SIP_SIDECAR_URLS+="${SIP_SIDECAR_URLS:+ }http://$host:$((port + index))"
        done
    done
    if [ -n "$key_file" ] && [ ! -r "$key_file" ]; then
        sip_log "error: the $role API key file $key_file is not readable"
        return 1
    fi
    sip_log "starting $((${#hosts[@]} * per_node)) $role server(s) on ${hosts[*]} (component $group," \
        "$per_node per node from port $port, TP $tp${launcher:+, launched by $launcher}${key_file:+, API key from a file})"
    SIP_SIDECAR_PIDS=""
    if [ -z "$launcher" ]; then
        SIP_SERVE_MODEL=$model SIP_SERVE_PORT=$port SIP_SERVE_TP=$tp SIP_SERVE_CONFIG=$config \
            SIP_SERVERS_PER_NODE=$per_node SIP_SERVE_API_KEY_FILE=$key_file \
            srun --het-group="$group" --nodes="${#hosts[@]}" --ntasks=$((${#hosts[@]} * per_node)) \
            --ntasks-per-node="$per_node" --cpus-per-task=$((cpus / per_node > 0 ? cpus / per_node : 1)) \
            "${gpu_args[@]}" --kill-on-bad-exit=0 --job-name="sip-$role" "${container[@]}" \
            "$SIP_REPO/slurm/lib/sip_node_run.sh" "$log_dir/$role" bash -c "$command" &
        SIP_SIDECAR_PIDS=$!
        return 0
    fi
    # One step per server, one MPI task per GPU of it; the step's GPUs are shared by its tasks.
    local -a step_gpus=()
    if [ "$gpus" -gt 0 ]; then
        step_gpus=("--gpus=$((gpus / per_node))")
    fi
    for host in "${hosts[@]}"; do
        for ((index = 0; index < per_node; index++)); do
            SIP_SERVE_MODEL=$model SIP_SERVE_PORT=$((port + index)) SIP_SERVE_TP=$tp SIP_SERVE_CONFIG=$config \
                SIP_SERVERS_PER_NODE=1 SIP_SERVE_LOG_SUFFIX="$([ "$per_node" -gt 1 ] && echo "-$index")" \
                SIP_SERVE_API_KEY_FILE=$key_file \
                srun --het-group="$group" --nodes=1 --nodelist="$host" --ntasks="$tp" --ntasks-per-node="$tp" \
                --cpus-per-task=$((cpus / per_node / tp > 0 ? cpus / per_node / tp : 1)) --mpi="${SIP_SRUN_MPI:-pmix}" \
                "${step_gpus[@]}" --overlap --kill-on-bad-exit=0 --job-name="sip-$role" "${container[@]}" \
                "$SIP_REPO/slurm/lib/sip_node_run.sh" "$log_dir/$role" "$launcher" bash -c "$command" &
            SIP_SIDECAR_PIDS+="${SIP_SIDECAR_PIDS:+ }$!"
        done
    done
}

# The launcher a sidecar command needs: SIP_<ROLE>_LAUNCHER when set ("none" = no launcher), else
# trtllm-llmapi-launch for the default trtllm-serve command over more than one GPU, else none.
#   $1 role variable prefix (JUDGE|REWRITER)  $2 command  $3 TP size
sip_sidecar_launcher() {
    local var="SIP_${1}_LAUNCHER" command=$2 tp=$3
    if [ -n "${!var:-}" ]; then
        [ "${!var}" = none ] || echo "${!var}"
    elif [ "$command" = "$SIP_DEFAULT_SERVE_CMD" ] && [ "$tp" -gt 1 ]; then
        echo trtllm-llmapi-launch
    fi
}

# Wait until every url is ready (sip_server_ready), or fail: after the timeout, or at once when
# a sidecar step has exited (its log then says why).
#   $1 timeout in seconds  $2 log folder  then quadruples: role "pids of its sruns" "url url ..."
#   key-file (pids "-" for servers this job did not start; key file "-" for none)
sip_wait_healthy() {
    local timeout_s=$1 log_dir=$2
    shift 2
    local -a roles=() pids=() urls_of=() keys=()
    while [ "$#" -ge 4 ]; do
        roles+=("$1") pids+=("$2") urls_of+=("$3") keys+=("$4")
        shift 4
    done
    local start=$SECONDS next_note=$((SECONDS + 60)) index pending url pid key
    while true; do
        pending=""
        for index in "${!roles[@]}"; do
            for pid in ${pids[$index]}; do
                if [ "$pid" != - ] && ! kill -0 "$pid" 2>/dev/null; then
                    sip_log "error: a ${roles[$index]} sidecar exited before it was healthy; see $log_dir/${roles[$index]}-*.log"
                    return 1
                fi
            done
            key=${keys[$index]}
            [ "$key" != - ] || key=""
            for url in ${urls_of[$index]}; do
                sip_server_ready "$url" "$key" || pending+="${pending:+ }$url"
            done
        done
        if [ -z "$pending" ]; then
            sip_log "health gate passed: every sidecar is ready after $((SECONDS - start)) s"
            return 0
        fi
        if [ $((SECONDS - start)) -ge "$timeout_s" ]; then
            sip_log "error: health gate timed out after ${timeout_s} s; not healthy: $pending." \
                "See the sidecar logs in $log_dir; raise SIP_HEALTH_TIMEOUT_S if the model is still loading."
            return 1
        fi
        if [ "$SECONDS" -ge "$next_note" ]; then
            sip_log "waiting for /health (or /v1/models) of: $pending ($((SECONDS - start)) s of ${timeout_s} s)"
            next_note=$((SECONDS + 60))
        fi
        sleep "${SIP_HEALTH_POLL_S:-2}"
    done
}

# Stop background srun steps: SIGTERM (srun forwards it to its tasks), then SIGKILL after the
# grace period. Slurm ends any step still running when the job ends, so this is for a clean log.
#   $1 grace in seconds, then PIDs
sip_stop_steps() {
    local grace_s=$1 pid deadline
    shift
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + grace_s))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# A Hydra value in single quotes, so that spaces, commas and brackets in it survive. Inside,
# Hydra reads \' as a quote and \\ as a backslash only before a quote (or the closing one), so
# exactly those backslashes are doubled.
#   $1 value
sip_hydra_quote() {
    local value=$1 out="" run="" char index
    for ((index = 0; index < ${#value}; index++)); do
        char=${value:index:1}
        if [ "$char" = "\\" ]; then
            run+="\\"
            continue
        fi
        if [ "$char" = "'" ]; then
            out+="$run$run\\'"
        else
            out+="$run$char"
        fi
        run=""
    done
    printf "'%s'" "$out$run$run"
}

# A Hydra list override with every item quoted: key=['a','b']
#   $1 key  then the items
sip_list_override() {
    local key=$1 item items=""
    shift
    for item in "$@"; do
        items+="${items:+,}$(sip_hydra_quote "$item")"
    done
    printf '%s=[%s]' "$key" "$items"
}

# A Hydra override key=value with the value quoted.
#   $1 key  $2 value
sip_value_override() {
    printf '%s=%s' "$1" "$(sip_hydra_quote "$2")"
}

# SIP_OVERRIDES as a list of overrides, split like a shell splits words (quotes keep spaces:
# SIP_OVERRIDES="run.name='my run' train.steps=5"), without running anything. Prints them one per
# line with NUL separators for `mapfile -d ''`.
sip_split_overrides() {
    [ -n "${1:-}" ] || return 0
    printf '%s' "$1" | xargs -r printf '%s\0'
}
