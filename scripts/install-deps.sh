#!/usr/bin/env bash
# Installs the Debian 12 packages Flotilla needs to build, test, lint and run its demo.
# Idempotent: asks dpkg which packages are missing and runs apt-get only for those.
#
#   bash scripts/install-deps.sh            install what is missing (root needed only then)
#   bash scripts/install-deps.sh --check    list missing packages; exit 1 if any, install nothing
#   bash scripts/install-deps.sh [--check] PACKAGE...   the same for the given packages only
set -euo pipefail

readonly PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libpaho-mqttpp-dev libpaho-mqtt-dev
  mosquitto mosquitto-clients
  libprotobuf-dev protobuf-compiler
  librocksdb-dev libfmt-dev doctest-dev libcli11-dev libtomlplusplus-dev libssl-dev libsqlite3-dev
  clang-format clang-tidy
  coreutils python3
)
readonly POLICY_RC_D=/usr/sbin/policy-rc.d

log() { printf 'install-deps: %s\n' "$*" >&2; }

check_only=0
if [[ "${1:-}" == "--check" ]]; then
  check_only=1
  shift
fi
if (($# > 0)); then
  wanted=("$@")
else
  wanted=("${PACKAGES[@]}")
fi

# A package counts as present only when dpkg says "install ok installed" (not "config-files",
# "half-installed", ... nor unknown).
missing=()
for pkg in "${wanted[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  log "all ${#wanted[@]} packages present"
  exit 0
fi
if ((check_only)); then
  printf '%s\n' "${missing[@]}"
  exit 1
fi
if (($(id -u) != 0)); then
  log "missing packages: ${missing[*]}"
  log "run as root or install: apt-get install ${missing[*]}"
  exit 1
fi

# Package scripts start services through invoke-rc.d. The mosquitto package would start a
# system broker on port 1883; in a container without systemd a failing init script aborts the
# whole install. Flotilla never uses the system broker, so deny service starts for the
# duration of the install (policy-rc.d exit 101, see invoke-rc.d(8)) unless the machine
# already has a policy of its own.
created_policy=0
cleanup() {
  if ((created_policy)); then rm -f -- "$POLICY_RC_D"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ ! -e "$POLICY_RC_D" ]]; then
  printf '#!/bin/sh\n# Written by flotilla scripts/install-deps.sh for the duration of an install.\nexit 101\n' \
    >"$POLICY_RC_D"
  chmod 0755 "$POLICY_RC_D"
  created_policy=1
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

still_missing=()
for pkg in "${missing[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || still_missing+=("$pkg")
done
if ((${#still_missing[@]} > 0)); then
  log "still missing after apt-get install: ${still_missing[*]}"
  exit 1
fi
log "installed ${#missing[@]} package(s)"
