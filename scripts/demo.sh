#!/usr/bin/env bash
# Runs a small Flotilla installation on this machine: a Mosquitto broker from the production
# template (deploy/mosquitto), flotilla-manager, one flotilla-agent for this host and a
# simulated fleet (flotilla-sim). Prints commands to try, then runs until Ctrl-C or SIGTERM
# and stops everything it started.
#
#   bash scripts/demo.sh
#
# Environment:
#   FLOTILLA_DEMO_DIR             work directory (default /tmp/flotilla-demo). The manager's
#                                 RocksDB data in it survives from one run to the next.
#   FLOTILLA_DEMO_DEVICES         simulated devices (default 240)
#   FLOTILLA_DEMO_AGENT_ID        device id of this host's agent (default demo-host)
#   FLOTILLA_DEMO_READY_TIMEOUT   seconds to wait for every device to come online (default 180)
#   FLOTILLA_DEMO_EXIT_AFTER_READY=1  stop everything and exit 0 once the fleet is online
#   BUILD_DIR                     build directory (default build/)
#
# While it runs: `kill <manager pid>` makes the demo start the manager again (persistence);
# `kill -USR1 <demo pid>` restarts the agent (after you killed it to watch it go offline).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
readonly caller_dir="$PWD"  # printed commands are relative to it
cd "$ROOT"

work="${FLOTILLA_DEMO_DIR:-/tmp/flotilla-demo}"
devices="${FLOTILLA_DEMO_DEVICES:-240}"
agent_id="${FLOTILLA_DEMO_AGENT_ID:-demo-host}"
ready_timeout="${FLOTILLA_DEMO_READY_TIMEOUT:-180}"
exit_after_ready="${FLOTILLA_DEMO_EXIT_AFTER_READY:-0}"
build_dir="${BUILD_DIR:-$ROOT/build}"
[[ "$build_dir" == /* ]] || build_dir="$ROOT/$build_dir"  # as scripts/build.sh reads it
readonly sim_prefix="sim" agent_keepalive=10 max_manager_restarts=5

say() { printf 'demo: %s\n' "$*"; }
die() {
  printf 'demo: error: %s\n' "$*" >&2
  exit 1
}

if ! [[ "$devices" =~ ^[0-9]{1,6}$ ]] || ((10#$devices > 100000)); then
  die "FLOTILLA_DEMO_DEVICES: '$devices' is not a number from 0 to 100000"
fi
devices=$((10#$devices))
if ! [[ "$ready_timeout" =~ ^[0-9]{1,6}$ ]] || ((10#$ready_timeout == 0)); then
  die "FLOTILLA_DEMO_READY_TIMEOUT: '$ready_timeout' is not a positive number of seconds"
fi
ready_timeout=$((10#$ready_timeout))
[[ "$agent_id" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "FLOTILLA_DEMO_AGENT_ID: '$agent_id' is not a valid device id"
case "$agent_id" in
  flotilla-manager | flotilla-operator | "$sim_prefix"-*) die "FLOTILLA_DEMO_AGENT_ID: '$agent_id' is reserved" ;;
esac
# mosquitto.conf cannot hold other characters (see deploy/mosquitto/make-broker-config).
[[ "$work" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "FLOTILLA_DEMO_DIR: '$work' may only contain [A-Za-z0-9._/+-]"

bash "$ROOT/scripts/build.sh"

manager_bin="$build_dir/fleet-manager/flotilla-manager"
agent_bin="$build_dir/device-agent/flotilla-agent"
sim_bin="$build_dir/examples/sim/flotilla-sim"
cli_bin="$build_dir/cli/flotilla"
for bin in "$manager_bin" "$agent_bin" "$sim_bin" "$cli_bin"; do
  [[ -x "$bin" ]] || die "$bin was not built"
done
# Debian installs mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
mosquitto_bin="$(command -v mosquitto || true)"
[[ -n "$mosquitto_bin" ]] || mosquitto_bin=/usr/sbin/mosquitto
[[ -x "$mosquitto_bin" ]] || die "mosquitto not found (run scripts/install-deps.sh)"

mkdir -p -- "$work"
[[ -O "$work" ]] || die "$work belongs to another user; set FLOTILLA_DEMO_DIR"
work="$(cd -- "$work" && pwd -P)"
[[ "$work" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "FLOTILLA_DEMO_DIR resolves to '$work', which mosquitto.conf cannot hold"
readonly work
secrets="$work/secrets" logs="$work/logs"
mkdir -p -- "$logs" "$work/manager" "$work/agent"
(umask 077 && mkdir -p -- "$secrets")
chmod 0700 "$secrets" "$work/manager" "$work/agent"

# --- processes -------------------------------------------------------------------------------
# Every child this script starts is recorded here and stopped (and reaped) on exit.
declare -A pids=()
stop_requested=0
restart_agent_requested=0

alive() {  # pid: running and not a zombie
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

stop_process() {  # name: SIGTERM, then SIGKILL after 10 s; always reaps
  local name="$1" pid="${pids[$1]:-}" i status=0
  [[ -n "$pid" ]] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      say "$name (pid $pid) did not stop within 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || status=$?
  unset "pids[$name]"
  # 143: ended by our SIGTERM without handling it; anything else but 0 deserves a look.
  if ((status != 0 && status != 143)); then
    say "warning: $name exited with status $status while stopping; see $logs/$name.log"
  fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT
  trap '' INT TERM USR1  # a second Ctrl-C must not leave children behind
  if ((${#pids[@]} > 0)); then
    say "stopping the demo's processes"
    for name in sim agent manager mosquitto; do stop_process "$name"; done
    say "stopped; logs are in $logs"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'stop_requested=1' INT TERM
trap 'restart_agent_requested=1' USR1

check_stop() {
  if ((stop_requested)); then
    say "interrupted"
    exit 130
  fi
}

# Starts a child with its output appended to logs/NAME.log.
start() {  # name command...
  local name="$1"
  shift
  "$@" </dev/null >>"$logs/$name.log" 2>&1 &
  pids[$name]=$!
}

require_alive() {  # name
  local pid="${pids[$1]}"
  if ! alive "$pid"; then
    local status=0
    wait "$pid" 2>/dev/null || status=$?
    unset "pids[$1]"
    printf 'demo: error: %s exited with status %d; the end of %s:\n' "$1" "$status" "$logs/$1.log" >&2
    tail -n 20 "$logs/$1.log" >&2 || true
    exit 1
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_ports() {  # prints two distinct free loopback ports
  python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

random_password() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }

cli() { "$cli_bin" --config "$work/cli.toml" "$@"; }

# --- credentials and configuration -----------------------------------------------------------
rm -f -- "$logs"/*.log
say "work directory $work (logs in $logs)"

sim_ids() {  # the ids flotilla-sim uses: {prefix}-{pc|printer|sensor}-{index:05}
  local kinds=(pc printer sensor) i
  for ((i = 0; i < devices; i++)); do
    printf '%s-%s-%05d\n' "$sim_prefix" "${kinds[i % 3]}" "$i"
  done
}

(
  umask 077
  for who in manager operator agent sim; do random_password >"$secrets/$who.password"; done
  {
    printf 'flotilla-manager:%s\n' "$(<"$secrets/manager.password")"
    printf 'flotilla-operator:%s\n' "$(<"$secrets/operator.password")"
    printf '%s:%s\n' "$agent_id" "$(<"$secrets/agent.password")"
    sim_password="$(<"$secrets/sim.password")"
    sim_ids | sed "s/\$/:$sim_password/"
  } >"$secrets/users.txt"
)
chmod 0600 "$secrets"/*

# Job signing: the operator's Ed25519 key (kept across runs) and the public key every agent and
# simulated device of the demo trusts (docs/jobs.md, "Security").
mkdir -p -- "$work/trusted"
if [[ ! -f "$secrets/operator.key" ]]; then
  "$cli_bin" keys generate --out "$secrets" --name operator >>"$logs/keys.log" 2>&1 \
    || { tail -n 5 "$logs/keys.log" >&2; die "cannot generate the operator's signing key"; }
fi
cp -- "$secrets/operator.pub" "$work/trusted/operator.pub"

write_configs() {  # device_port service_port
  local device_uri="mqtt://127.0.0.1:$1" service_uri="mqtt://127.0.0.1:$2"
  cat >"$work/manager.toml" <<EOF
# flotilla-manager configuration written by scripts/demo.sh
[mqtt]
broker = "$service_uri"
username = "flotilla-manager"
password_file = "$secrets/manager.password"

[manager]
data_dir = "$work/manager"
instance_id = "demo"

[log]
level = "info"
EOF
  cat >"$work/agent.toml" <<EOF
# flotilla-agent configuration written by scripts/demo.sh
[mqtt]
broker = "$device_uri"
password_file = "$secrets/agent.password"
# The broker declares the agent dead after 1.5 x keepalive of silence.
keepalive = "${agent_keepalive}s"

[agent]
device_id = "$agent_id"
state_dir = "$work/agent"
telemetry_interval = "5s"
tenant = "demo"
site = "this-host"
tags = ["demo", "real-host"]

[jobs]
trusted_keys = "$work/trusted"
# The demo runs on your machine: package and patch jobs only run apt's simulation.
apt_simulate_only = true

[log]
level = "info"
EOF
  cat >"$work/cli.toml" <<EOF
# flotilla CLI configuration written by scripts/demo.sh
signing_key = "$secrets/operator.key"

[mqtt]
broker = "$service_uri"
username = "flotilla-operator"
password_file = "$secrets/operator.password"
EOF
}

# --- broker ----------------------------------------------------------------------------------
# Free ports are picked, then bound by mosquitto: another process may take one in between,
# so a broker that does not come up is retried on new ports.
device_port="" service_port=""
for attempt in 1 2 3; do
  read -r device_port service_port < <(free_ports)
  deploy/mosquitto/make-broker-config --out "$work/broker" --device-port "$device_port" \
    --service-port "$service_port" --users "$secrets/users.txt" >>"$logs/make-broker-config.log" 2>&1 \
    || { tail -n 5 "$logs/make-broker-config.log" >&2; die "make-broker-config failed"; }
  start mosquitto "$mosquitto_bin" -c "$work/broker/mosquitto.conf"
  for ((i = 0; i < 100; i++)); do
    check_stop
    alive "${pids[mosquitto]}" || break
    if port_open "$device_port" && port_open "$service_port"; then break 2; fi
    sleep 0.1
  done
  say "broker did not come up on ports $device_port/$service_port (attempt $attempt):"
  tail -n 5 "$logs/mosquitto.log" "$work/broker/data/mosquitto.log" 2>/dev/null | sed 's/^/  /' || true
  stop_process mosquitto
  device_port="" service_port=""
done
[[ -n "$device_port" ]] || die "mosquitto did not start; see $logs/mosquitto.log and $work/broker/data/mosquitto.log"
say "broker up: devices on 127.0.0.1:$device_port, manager and CLI on 127.0.0.1:$service_port (pid ${pids[mosquitto]})"
write_configs "$device_port" "$service_port"

# --- manager, agent, simulator ---------------------------------------------------------------
start manager "$manager_bin" --config "$work/manager.toml"
manager_started=$SECONDS
for ((i = 0; ; i++)); do
  check_stop
  require_alive manager
  if cli --timeout 2s manager status >/dev/null 2>>"$logs/cli.log"; then break; fi
  ((i < 30)) || die "the manager did not answer within 30s; see $logs/manager.log and $logs/cli.log"
  sleep 1
done
say "manager up (pid ${pids[manager]}): $(grep -o 'starting with .*' "$logs/manager.log" | tail -n 1)"

start_agent() { start agent "$agent_bin" --config "$work/agent.toml"; }
start_ms="$(python3 -c 'import time; print(int(time.time() * 1000))')"
start_agent
if ((devices > 0)); then
  start sim "$sim_bin" --broker "mqtt://127.0.0.1:$device_port" --devices "$devices" --prefix "$sim_prefix" \
    --password-file "$secrets/sim.password" --telemetry-interval 10s --trusted-keys "$work/trusted"
fi
say "agent $agent_id (pid ${pids[agent]}) and $devices simulated devices${pids[sim]:+ (pid ${pids[sim]})} started"

# Ready when every device of this run is online and has been heard from since it started
# (records kept from an earlier run do not count).
expected=$((devices + 1))
online_now() {
  cli -o json --timeout 5s devices list 2>>"$logs/cli.log" | python3 -c '
import json, sys
start = int(sys.argv[1])
reply = json.load(sys.stdin)
devices = reply.get("devices", [])
fresh = sum(1 for d in devices if d.get("online") and int(d.get("last_seen_ms", "0")) >= start)
print(fresh, reply.get("total", len(devices)))
' "$start_ms" 2>/dev/null
}
deadline=$((SECONDS + ready_timeout))
last_report=-1
while :; do
  check_stop
  for name in "${!pids[@]}"; do require_alive "$name"; done
  read -r online total < <(online_now || echo "0 ?")
  if ((SECONDS - last_report >= 5 || online >= expected)); then
    say "online: $online of $expected devices (registry holds $total)"
    last_report=$SECONDS
  fi
  ((online >= expected)) && break
  ((SECONDS < deadline)) || die "only $online of $expected devices online after ${ready_timeout}s; see the logs in $logs"
  sleep 1
done
say "fleet ready in $((SECONDS - manager_started))s"
echo
cli devices count --by kind || true

# --- what to try -----------------------------------------------------------------------------
# Commands are printed relative to the caller's directory when the binary lies below it.
cli_cmd="$cli_bin"
[[ "$cli_cmd" == "$caller_dir"/* ]] && cli_cmd="${cli_cmd#"$caller_dir"/}"
cli_cmd="$cli_cmd --config $work/cli.toml"
cat <<EOF

What to try (in another terminal):

  $cli_cmd devices list | head
  $cli_cmd devices show $agent_id
  $cli_cmd devices count --by os.version
  $cli_cmd devices count --by firmware.version
  $cli_cmd devices count --by online
  $cli_cmd manager status
  $cli_cmd -o json devices show $agent_id | python3 -m json.tool | head -40

  # This host's agent goes offline ~$((agent_keepalive * 3 / 2))s after a crash (1.5 x keepalive):
  kill -9 ${pids[agent]}
  $cli_cmd devices show $agent_id | head -4
  kill -USR1 $$      # the demo starts the agent again

  # Jobs (docs/jobs.md): a signed script on this host, watched to the end; then every simulated
  # printer, 20 a minute, stopping itself if more than 5 % fail.
  printf '#!/bin/sh\nuname -a\ndf -h /\n' > /tmp/flotilla-hello.sh
  $cli_cmd scripts add hello /tmp/flotilla-hello.sh
  $cli_cmd jobs create --devices $agent_id --script hello
  $cli_cmd jobs watch \$($cli_cmd -o json jobs list --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["job_id"])')
  $cli_cmd jobs create --query 'kind:printer' --type inventory.refresh --rate 20/min --abort 'FAILED>5%@10'
  $cli_cmd jobs list
  $cli_cmd jobs create --devices $agent_id --type patch.scan
  $cli_cmd devices query 'patch.security_pending>0' --fields patch.pending,patch.security_pending
  $cli_cmd audit

  # Desired configuration (docs/policies.md): the tenant samples every 20 s, this host every 5 s.
  $cli_cmd policies set tenant demo telemetry.interval=20s
  $cli_cmd policies set device $agent_id telemetry.interval=5s
  $cli_cmd policies effective $agent_id
  $cli_cmd devices query 'config.drift:true' --fields config.desired,config.applied
  # The same change as a staged job, released by a second operator (four eyes):
  $cli_cmd jobs create --id cfg-1 --query 'kind:sensor' --type config.set --param telemetry.interval=60s --rate 100/min --require-approval
  FLOTILLA_ACTOR=second-operator $cli_cmd jobs approve cfg-1 --note 'reviewed'
  $cli_cmd jobs watch cfg-1

  # Restart the manager: the demo starts it again; its registry comes back from RocksDB
  # ($work/manager).
  kill ${pids[manager]}
  grep 'devices in the registry' $logs/manager.log
  $cli_cmd devices count --by kind

Logs: $logs/{mosquitto,manager,agent,sim}.log, broker log $work/broker/data/mosquitto.log
Running again keeps the manager's data: the next start loads these devices from RocksDB.
EOF

if [[ "$exit_after_ready" == "1" ]]; then
  say "FLOTILLA_DEMO_EXIT_AFTER_READY=1: stopping"
  exit 0
fi

echo
say "running; press Ctrl-C (or kill $$) to stop everything"
manager_restarts=0
while ((!stop_requested)); do
  sleep 1 || true
  ((stop_requested)) && break
  if ! alive "${pids[manager]}"; then
    status=0
    wait "${pids[manager]}" 2>/dev/null || status=$?
    unset "pids[manager]"
    if ((manager_restarts >= max_manager_restarts)); then
      die "the manager exited (status $status) $((manager_restarts + 1)) times; see $logs/manager.log"
    fi
    manager_restarts=$((manager_restarts + 1))
    start manager "$manager_bin" --config "$work/manager.toml"
    say "manager exited (status $status); started it again (pid ${pids[manager]})"
  fi
  if ((restart_agent_requested)); then
    restart_agent_requested=0
    stop_process agent
    start_agent
    say "agent started again (pid ${pids[agent]})"
  elif [[ -n "${pids[agent]:-}" ]] && ! alive "${pids[agent]}"; then
    status=0
    wait "${pids[agent]}" 2>/dev/null || status=$?
    say "agent exited (status $status); kill -USR1 $$ starts it again"
    unset "pids[agent]"
  fi
done
exit 0
