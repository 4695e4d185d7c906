#!/usr/bin/env bash
# cluster/local.sh — a real multi-node Ray cluster on one machine, for tests and for anyone who
# wants to see multi-node behaviour (placement, node loss, checkpoint recovery) without a cloud.
#
#   cluster/local.sh up       start a head + N worker nodes (separate `ray start` processes)
#   cluster/local.sh status   show nodes/resources; exit 0 when up, 3 when down
#   cluster/local.sh env      print `export ...` lines for clients (eval "$(cluster/local.sh env)"):
#                             RAY_ADDRESS (GCS, for ray.init), RAY_API_SERVER_ADDRESS (dashboard, for
#                             `ray job submit`), RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH
#   cluster/local.sh kill-node w1   SIGKILL one worker node (raylet + its workers): failure drills
#   cluster/local.sh start-node w1  (re)start a worker node, e.g. the "autoscaler replacement"
#   cluster/local.sh down     stop exactly the processes this script started
#
# Every node binds to 127.0.0.1 only, has its own --temp-dir under the state dir, its own custom
# resource ({"node_head":1}, {"node_w1":1}, ...) so work can be pinned to a node, and token auth is
# ON with a token file of its own (mode 0600), never ~/.ray/auth_token. `down` never calls
# `ray stop` (that kills every Ray process of every user on the machine): it signals only pids
# whose command line carries this cluster's state dir or whose environment carries its marker,
# raylets first (their workers exit with them), the GCS last.
#
# Settings (environment):
#   MDIR_LOCAL_DIR     state dir (default /tmp/mdlc-$UID). Keep it short: Ray puts Unix sockets
#                      under <temp-dir>/session_<date>_<pid>/sockets/ and the path limit is 107.
#   MDIR_RAY           the ray executable (default: <repo>/.venv/bin/ray)
#   MDIR_LOCAL_WORKERS number of worker nodes (default 2)
#   MDIR_HEAD_CPUS     logical CPUs of the head (default 1)
#   MDIR_WORKER_CPUS   logical CPUs per worker node (default 1)
#   MDIR_OBJECT_STORE  object store bytes per node (default 150000000)
#   MDIR_LOCAL_NICE    nice level for `ray start` (default -10 when permitted, 0 = off); reset to 0
#                      once up, so only start-up (agent imports vs a fixed raylet timeout) gains
#   MDIR_LOCAL_PREWRITE_PORTS  1 (default): write the agents' port files for the raylet up front
#                      (cluster/prewrite_ports.py; Ray's raylet waits only ~15 s for them)
#   MDIR_LOCAL_IP      node IP (default 127.0.0.1: nodes bind and advertise the loopback only,
#                      through cluster/ray_start_loopback.py)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
STATE="${MDIR_LOCAL_DIR:-/tmp/mdlc-$(id -u)}"
RAY="${MDIR_RAY:-$REPO/.venv/bin/ray}"
PY="$(dirname "$RAY")/python"
[ -x "$PY" ] || PY="$(command -v python3)"
NWORKERS="${MDIR_LOCAL_WORKERS:-2}"
HEAD_CPUS="${MDIR_HEAD_CPUS:-1}"
WORKER_CPUS="${MDIR_WORKER_CPUS:-1}"
OBJ_STORE="${MDIR_OBJECT_STORE:-150000000}"
IP="${MDIR_LOCAL_IP:-127.0.0.1}"

die() { echo "local.sh: $*" >&2; exit 1; }

# Absolute, normalized state dir: the pid match below relies on the exact string.
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd -P)"
[ "${#STATE}" -le 40 ] || die "MDIR_LOCAL_DIR '$STATE' is too long (Unix socket paths); use <= 40 chars"

free_ports() {  # free_ports N -> N distinct ports the OS reports free right now
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
}

# pids that belong to this cluster (optionally one node): cmdline carries the node's temp dir,
# or the environment carries the marker set at `ray start` (processes that rename themselves,
# e.g. ray::DashboardAgent or ray::IDLE workers, keep their environment).
our_pids() {
  local node="${1:-}" needle mark pid cmd d ppid found=" "
  if [ -n "$node" ]; then needle="$STATE/$node/"; mark="MDIR_LC_NODE=$STATE/$node"
  else needle="$STATE/"; mark="MDIR_LC_MARK=$STATE"; fi
  local table; table="$(ps -e -o pid=,ppid= 2>/dev/null)"
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [ "$pid" = "$$" ] && continue
    [ "$pid" = "$PPID" ] && continue
    cmd="$(tr '\0' ' ' 2>/dev/null < "$d/cmdline" || true)"
    [ -n "$cmd" ] || continue
    case "$cmd" in *local.sh*) continue ;; esac
    if [[ "$cmd" == *"$needle"* ]] || { tr '\0' '\n' < "$d/environ"; } 2>/dev/null | grep -qxF "$mark"; then
      found+="$pid "
    fi
  done
  # plus their descendants: the raylet starts its agents with a filtered environment and they
  # rename themselves (ray::DashboardAgent, ray::RuntimeEnvAgent)
  local changed=1
  while [ "$changed" = 1 ]; do
    changed=0
    while read -r pid ppid; do
      if [[ "$found" == *" $ppid "* && "$found" != *" $pid "* ]]; then found+="$pid "; changed=1; fi
    done <<<"$table"
  done
  for pid in $found; do [ -d "/proc/$pid" ] && echo "$pid"; done
  return 0
}

is_up() { [ -f "$STATE/cluster.env" ] && [ -n "$(our_pids head | head -1)" ]; }

cmd_env() {
  [ -f "$STATE/cluster.env" ] || die "no cluster in $STATE (run: cluster/local.sh up)"
  sed 's/^/export /' "$STATE/cluster.env"
}

start_node() {  # start_node NAME CPUS EXTRA_ARGS... ; each node has its own temp dir and marker
  # The raylet waits a fixed ~15 s for its dashboard agent to report its ports and aborts
  # otherwise; on 2 busy cores the agent's imports can take longer. So: start at a higher CPU
  # priority when allowed (set back to normal once the cluster is up, see cmd_up) and retry.
  local name="$1" cpus="$2"; shift 2
  local attempt nice_cmd=()
  if [ "${MDIR_LOCAL_NICE:--10}" != 0 ] && nice -n "${MDIR_LOCAL_NICE:--10}" true 2>/dev/null; then
    nice_cmd=(nice -n "${MDIR_LOCAL_NICE:--10}")
  fi
  for attempt in 1 2 3; do
    # Every agent port is chosen here: distinct ports let several nodes share one IP.
    local ports helper=""; read -r -a ports <<<"$(free_ports 4)"
    if [ "${MDIR_LOCAL_PREWRITE_PORTS:-1}" = 1 ]; then
      "${nice_cmd[@]}" "$PY" "$HERE/prewrite_ports.py" "$STATE/$name" 300 listen="${ports[0]}" \
        runtime_env="${ports[1]}" export="${ports[2]}" grpc="${ports[3]}" >/dev/null 2>&1 &
      helper=$!
    fi
    # PATH: `ray job submit -- python ...` must find the project's python (the venv of $RAY)
    if PATH="$(dirname "$RAY"):$PATH" MDIR_LC_MARK="$STATE" MDIR_LC_NODE="$STATE/$name" \
      RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/token" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
      RAY_ENABLE_UV_RUN_RUNTIME_ENV="${RAY_ENABLE_UV_RUN_RUNTIME_ENV:-0}" \
      RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-120000}" \
      RAY_worker_register_timeout_seconds="${RAY_worker_register_timeout_seconds:-120}" \
      RAY_DASHBOARD_STARTUP_TIMEOUT_S="${RAY_DASHBOARD_STARTUP_TIMEOUT_S:-240}" \
      "${nice_cmd[@]}" "$PY" "$HERE/ray_start_loopback.py" start --node-ip-address="$IP" \
        --temp-dir="$STATE/$name" \
        --num-cpus="$cpus" --num-gpus=0 --resources="{\"node_$name\": 1}" \
        --object-store-memory="$OBJ_STORE" \
        --node-manager-port=0 --object-manager-port=0 --metrics-export-port="${ports[2]}" \
        --dashboard-agent-listen-port="${ports[0]}" --dashboard-agent-grpc-port="${ports[3]}" \
        --runtime-env-agent-port="${ports[1]}" \
        --min-worker-port=0 --max-worker-port=0 \
        --disable-usage-stats --log-style=record "$@" >"$STATE/$name.log" 2>&1; then
      [ -z "$helper" ] || kill "$helper" 2>/dev/null || true
      return 0
    fi
    [ -z "$helper" ] || kill "$helper" 2>/dev/null || true
    # `ray start` gives up after a fixed 30 s; a raylet that is still alive may register later
    if [ -n "$(our_pids "$name" | xargs -r ps -o args= -p 2>/dev/null | grep -m1 raylet/raylet)" ] \
      && wait_registered "$name" 90; then
      echo "local.sh: node '$name' registered after \`ray start\` gave up (slow machine)" >&2
      return 0
    fi
    echo "local.sh: node '$name' attempt $attempt failed: $(grep -h -m1 -o -E 'Timed out waiting for file [^ ]*|Failed to start the dashboard|timed out during startup' "$STATE/$name.log" "$STATE/$name"/session_*/logs/raylet.out 2>/dev/null | head -1)" >&2
    cp "$STATE/$name.log" "$STATE/$name.attempt$attempt.log" 2>/dev/null || true
    stop_pids "$name"
  done
  tail -20 "$STATE/$name.log" >&2
  die "ray start of node '$name' failed 3 times (log: $STATE/$name.log)"
}

cmd_up() {
  [ -x "$RAY" ] || die "ray not found at $RAY (set MDIR_RAY or run 'make install')"
  if is_up; then echo "local.sh: already up in $STATE"; cmd_status; return 0; fi
  # a previous run that died half-way: clean it first, still only our own pids
  [ -z "$(our_pids | head -1)" ] || cmd_down
  rm -rf "${STATE:?}/head" "$STATE"/w[0-9]* "$STATE/cluster.env"  # old sessions of ours only
  umask 077
  [ -s "$STATE/token" ] || "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/token"
  chmod 600 "$STATE/token"
  umask 022
  local p; read -r -a p <<<"$(free_ports 3)"
  local gcs="${p[0]}" dash="${p[1]}" client="${p[2]}"
  HEAD_API="http://$IP:$dash"
  start_node head "$HEAD_CPUS" --head --port="$gcs" --dashboard-host="$IP" --dashboard-port="$dash" \
    --ray-client-server-port="$client" --include-dashboard=true
  {
    echo "RAY_ADDRESS=$IP:$gcs"
    echo "RAY_API_SERVER_ADDRESS=http://$IP:$dash"
    echo "RAY_AUTH_MODE=token"
    echo "RAY_AUTH_TOKEN_PATH=$STATE/token"
    echo "MDIR_LOCAL_DIR=$STATE"
    # clients keep 127.0.0.1 too (otherwise Ray rewrites it to the host address, where no
    # node of this cluster listens)
    echo "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  } >"$STATE/cluster.env"
  # worker nodes start in parallel (each `ray start` takes ~20 s on a busy 2-core machine)
  local i pids=() rc=0
  for i in $(seq 1 "$NWORKERS"); do
    start_node "w$i" "$WORKER_CPUS" --address="$IP:$gcs" &
    pids+=("$!")
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  [ "$rc" = 0 ] || { cmd_down >/dev/null 2>&1 || true; die "a worker node failed to start"; }
  # wait until every node registered with the GCS
  local want=$((NWORKERS + 1)) n=0 t
  for t in $(seq 1 60); do
    n="$(alive_nodes)" || n=0
    [ "$n" -ge "$want" ] && break
    sleep 1
  done
  [ "$n" -ge "$want" ] || die "only $n of $want nodes registered after 60 s (logs under $STATE)"
  # back to normal priority (new workers inherit the raylet's)
  # shellcheck disable=SC2046
  renice -n 0 -p $(our_pids) >/dev/null 2>&1 || true
  echo "local.sh: up — $want nodes on $IP, dashboard http://$IP:$dash, state $STATE"
  echo "  clients: eval \"\$(cluster/local.sh env)\"  then ray.init() / ray job submit -- ..."
}

wait_registered() {  # wait_registered NAME SECONDS: the node's custom resource is in an ALIVE node
  local name="$1" secs="$2" t0=$SECONDS api
  api="${HEAD_API:-$(sed -n 's/^RAY_API_SERVER_ADDRESS=//p' "$STATE/cluster.env" 2>/dev/null)}"
  while [ $((SECONDS - t0)) -lt "$secs" ]; do
    if RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/token" "$PY" - "$api" "node_$name" <<'EOF' 2>/dev/null
import sys
from ray.util.state import list_nodes
nodes = list_nodes(address=sys.argv[1], filters=[("state", "=", "ALIVE")], detail=True, raise_on_missing_output=False, timeout=20)
sys.exit(0 if any(sys.argv[2] in (n.resources_total or {}) for n in nodes) else 1)
EOF
    then return 0; fi
    sleep 3
  done
  return 1
}

alive_nodes() {  # number of alive nodes according to the GCS (token auth on)
  # shellcheck disable=SC1091
  ( set -a; . "$STATE/cluster.env"; set +a
    "$PY" - <<'EOF'
import os
from ray.util.state import list_nodes
nodes = list_nodes(address=os.environ["RAY_API_SERVER_ADDRESS"], filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
print(len(nodes))
EOF
  ) 2>/dev/null
}

cmd_status() {
  if ! is_up; then echo "local.sh: down ($STATE)"; return 3; fi
  ( set -a; . "$STATE/cluster.env"; set +a
    "$PY" - <<'EOF'
import os
from ray.util.state import list_nodes
nodes = list_nodes(address=os.environ["RAY_API_SERVER_ADDRESS"], raise_on_missing_output=False, detail=True)
for n in sorted(nodes, key=lambda n: n.node_name or ""):
    custom = {k: v for k, v in (n.resources_total or {}).items() if k.startswith("node_")}
    print(f"  {n.state:6s} {n.node_id[:12]} head={n.is_head_node} CPU={n.resources_total.get('CPU', 0)} {custom}")
print(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} (GCS)  RAY_API_SERVER_ADDRESS={os.environ['RAY_API_SERVER_ADDRESS']} (jobs)")
EOF
  ) || { echo "local.sh: processes exist but the GCS does not answer" >&2; return 3; }
  echo "pids: $(our_pids | tr '\n' ' ')"
}

signal_in_order() {  # signal_in_order SIG PIDS... : raylets first, then the rest, GCS last
  local sig="$1"; shift
  local raylets=() gcs=() rest=() pid cmd
  for pid in "$@"; do
    cmd="$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" || true)"
    case "$cmd" in
      *raylet/raylet*) raylets+=("$pid") ;;
      *gcs/gcs_server*) gcs+=("$pid") ;;
      *) rest+=("$pid") ;;
    esac
  done
  [ "${#raylets[@]}" -eq 0 ] || kill "-$sig" "${raylets[@]}" 2>/dev/null || true
  [ "${#rest[@]}" -eq 0 ] || kill "-$sig" "${rest[@]}" 2>/dev/null || true
  sleep 0.5
  [ "${#gcs[@]}" -eq 0 ] || kill "-$sig" "${gcs[@]}" 2>/dev/null || true
}

stop_pids() {  # stop_pids NODE_OR_EMPTY: TERM, wait up to 15 s, then KILL what is left
  local node="$1" pids t
  pids="$(our_pids "$node")"
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  signal_in_order TERM $pids
  for t in $(seq 1 30); do
    pids="$(our_pids "$node")"
    [ -n "$pids" ] || return 0
    sleep 0.5
  done
  # shellcheck disable=SC2086
  signal_in_order KILL $pids
  sleep 0.5
}

cmd_down() {
  stop_pids ""
  local left; left="$(our_pids)"
  [ -z "$left" ] || die "still running after SIGKILL: $left"
  rm -f "$STATE/cluster.env"
  echo "local.sh: down ($STATE)"
}

cmd_kill_node() {  # SIGKILL a worker node: what a lost machine looks like to the cluster
  local node="${1:-}"
  [[ "$node" =~ ^w[0-9]+$ ]] || die "kill-node needs a worker node name like w1"
  local pids; pids="$(our_pids "$node")"
  [ -n "$pids" ] || die "node $node is not running"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  echo "local.sh: killed node $node (pids $(echo $pids))"
}

cmd_start_node() {  # (re)start a worker node, e.g. the replacement after `kill-node`
  local node="${1:-}"
  [[ "$node" =~ ^w[0-9]+$ ]] || die "start-node needs a worker node name like w1"
  is_up || die "no cluster in $STATE (run: cluster/local.sh up)"
  [ -z "$(our_pids "$node" | head -1)" ] || die "node $node is already running"
  local gcs; gcs="$(sed -n 's/^RAY_ADDRESS=//p' "$STATE/cluster.env")"
  rm -rf "${STATE:?}/$node.old"; [ ! -d "$STATE/$node" ] || mv "$STATE/$node" "$STATE/$node.old"
  start_node "$node" "$WORKER_CPUS" --address="$gcs"
  # shellcheck disable=SC2046
  renice -n 0 -p $(our_pids "$node") >/dev/null 2>&1 || true
  echo "local.sh: started node $node"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  kill-node) cmd_kill_node "${2:-}" ;;
  start-node) cmd_start_node "${2:-}" ;;
  *) echo "usage: $0 up|down|status|env|kill-node wN|start-node wN" >&2; exit 2 ;;
esac
