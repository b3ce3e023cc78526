# Shared by scripts/demo and scripts/test: install what is missing on Debian 12, as root, then
# make a virtualenv with cachemesh in it. Sourced, not run.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CACHEMESH_VENV:-$REPO/.venv}"

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: run as root: it installs Debian packages and starts private Docker engines" >&2
    exit 2
fi

install_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "Installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# docker.io: a real engine (dockerd 20.10 and Debian's CLI); busybox-static: a base image without a
# registry; iproute2/iptables: network-namespace hosts; python3-venv: the virtualenv.
install_debs docker.io busybox-static iproute2 iptables ca-certificates python3 python3-venv python3-pip

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e "$REPO${CACHEMESH_EXTRAS:-}"
