#!/usr/bin/env bash
# launch.sh: run train.py under torchrun, on one node or many.
# See `./launch.sh --help` and docs/launch.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch.sh [options] CONFIG [key=value ...] [-- train.py flags ...]

Runs `torchrun ... train.py --config CONFIG key=value ...`. Every override is
passed to train.py as its own argument, untouched (spaces and quotes survive).

One node (default): one process per local GPU, or 1 CPU process without a GPU.
  --nproc N            processes on this node (overrides the GPU count)

Several nodes: run the same command on every node. Flags win over environment
variables, which win over SLURM's variables.
  --nnodes N           number of nodes (env NNODES; SLURM_NNODES), or MIN:MAX with c10d
  --node-rank R        this node's rank, 0..N-1 (env NODE_RANK; SLURM_NODEID)
  --master-addr HOST   rank 0's host (env MASTER_ADDR; first host of SLURM_JOB_NODELIST)
  --master-port PORT   rank 0's port (env MASTER_PORT; default 29500)
  --rdzv static|c10d   static rendezvous (default; needs every node's rank) or the
                       elastic c10d rendezvous (nodes may join late or be replaced)
  --rdzv-endpoint H:P  c10d endpoint (default MASTER_ADDR:MASTER_PORT)
  --rdzv-id ID         c10d job id, the same on every node (default SLURM_JOB_ID or "resnest")
  --max-restarts N     restart the worker group up to N times after a worker dies;
                       the run resumes from its last checkpoint (default 0)
  --shutdown-timeout S seconds from SIGTERM (preemption) to torchrun's SIGKILL: time
                       to finish the step and write the checkpoint (env
                       TORCH_ELASTIC_SHUTDOWN_TIMEOUT; default 170, below the 180 s
                       warning of SLURM's --signal=...@180; torchrun's own is 30)

Other:
  --dry-run            print the torchrun command (shell-quoted) and exit
  -h, --help           this help

Environment: PYTHON (interpreter, default `python`: a venv's python works),
TRAIN_PY (the training script, default train.py next to this file).

Examples:
  ./launch.sh configs/quickstart.yaml train.epochs=2
  ./launch.sh --nproc 2 configs/quickstart.yaml data.backend=synthetic
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 ./launch.sh configs/resnest50.yaml
EOF
}

die() { echo "launch.sh: $*" >&2; echo "Run 'launch.sh --help' for usage." >&2; exit 2; }

# quoted=WORD, shell-quoted exactly like Python's shlex.quote
quote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9@%+=:,./_-]+$ ]]; then
    quoted=$s
  else
    quoted="'${s//\'/\'\"\'\"\'}'"
  fi
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python}
train_py=${TRAIN_PY:-$here/train.py}

# ---- parse the command line ------------------------------------------------------------
nproc="" nnodes="" node_rank="" master_addr="" master_port=""
rdzv=static rdzv_endpoint="" rdzv_id="" max_restarts="" shutdown_timeout="" dry_run=0
config="" overrides=() train_flags=()

while (($#)); do
  arg=$1
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --) shift; train_flags=("$@"); break ;;
    --*=*) name=${arg%%=*} value=${arg#*=}; shift ;;
    --*) name=$arg
         (($# >= 2)) || die "$name needs a value"
         value=$2; shift 2 ;;
    *)
      if [[ -z $config ]]; then config=$arg
      elif [[ $arg == *=* ]]; then overrides+=("$arg")
      else die "'$arg' is not a key=value override (e.g. train.epochs=2)"
      fi
      shift; continue ;;
  esac
  case $name in
    --nproc|--nproc-per-node|--nproc_per_node) nproc=$value ;;
    --nnodes) nnodes=$value ;;
    --node-rank|--node_rank) node_rank=$value ;;
    --master-addr|--master_addr) master_addr=$value ;;
    --master-port|--master_port) master_port=$value ;;
    --rdzv|--rdzv-backend|--rdzv_backend) rdzv=$value ;;
    --rdzv-endpoint|--rdzv_endpoint) rdzv_endpoint=$value ;;
    --rdzv-id|--rdzv_id) rdzv_id=$value ;;
    --max-restarts|--max_restarts) max_restarts=$value ;;
    --shutdown-timeout|--shutdown_timeout) shutdown_timeout=$value ;;
    *) die "unknown option $name" ;;
  esac
done

[[ -n $config ]] || die "missing CONFIG (a YAML file, e.g. configs/quickstart.yaml)"

# ---- fill the gaps: flags > environment > SLURM > defaults -------------------------------
if [[ -n ${SLURM_JOB_ID:-} ]]; then
  slurm_nnodes=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-}}
  slurm_master=""
  nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
  if [[ -n $nodelist ]]; then
    if command -v scontrol >/dev/null 2>&1; then
      slurm_master=$(scontrol show hostnames "$nodelist" | head -n 1)
    else
      # no scontrol: "node[03-05,9],gpu7" -> node03 (good enough for the usual forms)
      first=${nodelist%%,*}
      if [[ $nodelist == *\[* && ${nodelist%%\[*} != *,* ]]; then
        inner=${nodelist#*\[}; inner=${inner%%[],-]*}
        first=${nodelist%%\[*}$inner
      fi
      slurm_master=$first
    fi
  fi
  nnodes=${nnodes:-${NNODES:-$slurm_nnodes}}
  if [[ ${nnodes:-1} != 1 ]]; then  # one node keeps its private rendezvous (below)
    node_rank=${node_rank:-${NODE_RANK:-${SLURM_NODEID:-}}}
    master_addr=${master_addr:-${MASTER_ADDR:-$slurm_master}}
  fi
  rdzv_id=${rdzv_id:-$SLURM_JOB_ID}
fi
nnodes=${nnodes:-${NNODES:-1}}
node_rank=${node_rank:-${NODE_RANK:-}}
master_addr=${master_addr:-${MASTER_ADDR:-}}
master_port=${master_port:-${MASTER_PORT:-29500}}
rdzv_id=${rdzv_id:-resnest}
shutdown_timeout=${shutdown_timeout:-${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-170}}

if [[ -z $nproc ]]; then
  # one process per local GPU; CUDA_VISIBLE_DEVICES narrows the list; no GPU: 1 CPU process
  nproc=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    nproc=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} && $nproc -gt 0 ]]; then
      IFS=, read -r -a visible <<<"${CUDA_VISIBLE_DEVICES}"
      if ((${#visible[@]} < nproc)); then nproc=${#visible[@]}; fi
    fi
  fi
  ((nproc > 0)) || nproc=1
fi

# ---- check ---------------------------------------------------------------------------
is_uint "$nproc" && ((nproc >= 1)) || die "--nproc must be a positive integer, got '$nproc'"
[[ $nnodes =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--nnodes must be N or MIN:MAX, got '$nnodes'"
is_uint "$master_port" || die "--master-port must be a port number, got '$master_port'"
[[ -z $max_restarts ]] || is_uint "$max_restarts" || die "--max-restarts must be an integer, got '$max_restarts'"
is_uint "$shutdown_timeout" \
  || die "--shutdown-timeout must be a whole number of seconds, got '$shutdown_timeout'"
max_nodes=${nnodes#*:}

cmd=("$python" -m torch.distributed.run)
case $rdzv in
  static)
    [[ $nnodes != *:* ]] || die "--nnodes MIN:MAX needs --rdzv c10d"
    if ((nnodes == 1)) && [[ -z $master_addr ]]; then
      # one node: a private rendezvous on a free port, so concurrent runs never collide
      cmd+=(--standalone --nnodes 1)
    else
      [[ -n $master_addr ]] || die "$nnodes nodes need MASTER_ADDR (or --master-addr): rank 0's host"
      [[ -n $node_rank ]] || die "$nnodes nodes need NODE_RANK (or --node-rank) on every node, 0..$((nnodes - 1))"
      is_uint "$node_rank" && ((node_rank < nnodes)) \
        || die "NODE_RANK must be 0..$((nnodes - 1)), got '$node_rank'"
      cmd+=(--nnodes "$nnodes" --node_rank "$node_rank"
            --master_addr "$master_addr" --master_port "$master_port")
    fi ;;
  c10d)
    if [[ -z $rdzv_endpoint ]]; then
      if [[ -z $master_addr ]]; then
        ((max_nodes == 1)) || die "c10d on several nodes needs --rdzv-endpoint HOST:PORT (or MASTER_ADDR)"
        master_addr=127.0.0.1
      fi
      rdzv_endpoint=$master_addr:$master_port
    fi
    cmd+=(--nnodes "$nnodes" --rdzv_backend c10d --rdzv_endpoint "$rdzv_endpoint" --rdzv_id "$rdzv_id") ;;
  *) die "--rdzv must be static or c10d, got '$rdzv'" ;;
esac
cmd+=(--nproc_per_node "$nproc")
[[ -z $max_restarts ]] || cmd+=(--max_restarts "$max_restarts")
cmd+=(--shutdown_timeout "$shutdown_timeout")
cmd+=("$train_py" --config "$config")
cmd+=(${overrides[@]+"${overrides[@]}"} ${train_flags[@]+"${train_flags[@]}"})

if ((dry_run)); then
  line=""
  for word in "${cmd[@]}"; do quote "$word"; line+="${line:+ }$quoted"; done
  printf '%s\n' "$line"
  exit 0
fi
# Run torchrun as a child rather than exec it: a scheduler's SIGTERM (preemption) is passed
# on (torchrun hands it to the workers, which checkpoint) and we then exit 143, the status
# schedulers expect, where torchrun itself would exit 1 with a traceback.
got_signal=""
forward() { got_signal=$1; kill -s "$1" "$child" 2>/dev/null || true; }
"${cmd[@]}" &
child=$!
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP
status=0
wait "$child" || status=$?
if [[ -n $got_signal ]]; then
  status=0
  wait "$child" 2>/dev/null || status=$?  # the first wait was cut short by the signal
  case $got_signal in TERM) exit 143 ;; INT) exit 130 ;; HUP) exit 129 ;; esac
fi
exit "$status"
