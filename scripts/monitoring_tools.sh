# What the monitoring tests (tests/test_monitoring.py) need: Prometheus and promtool from Debian
# 12's `prometheus` package (2.42: `promtool check rules`, `promtool test rules`, and a server
# that scrapes an in-process node), check-jsonschema from PyPI (the Grafana dashboard against
# deploy/grafana/dashboard.schema.json), and PyYAML (the tests read the rules file). Sourced by scripts/test after setup.sh ($VENV); fails
# loudly if a tool cannot be had, so the monitoring tests never go missing silently.
#
# The package is unpacked, not installed: installing it would create a user and, on a host whose
# init allows it, start a system-wide Prometheus on :9090 scraping this machine. Its two binaries
# are static Go programs and need none of its dependencies (web UI JavaScript, adduser). They
# land in $CACHEMESH_TOOLS/prometheus/root/usr/bin (default /var/cache/cachemesh/tools), reused
# by later runs; the tests look there when `promtool` is not on PATH.
#
# npm is not needed here: only scripts/grafana_schema.sh, which regenerates the committed schema.

CACHEMESH_TOOLS="${CACHEMESH_TOOLS:-/var/cache/cachemesh/tools}"
export CACHEMESH_TOOLS
CHECK_JSONSCHEMA_VERSION="0.39.0"
PYYAML_VERSION="6.0.3"  # installed only if the virtualenv has no PyYAML at all

fetch_prometheus() {
    local dir="$CACHEMESH_TOOLS/prometheus"
    if [ -f "$dir/done" ] && [ -x "$dir/root/usr/bin/promtool" ] && [ -x "$dir/root/usr/bin/prometheus" ]; then
        return 0
    fi
    echo "Fetching Debian's prometheus package into $dir"
    rm -rf "$dir/root" "$dir/debs"
    mkdir -p "$dir/debs" "$dir/root"
    apt-get update -qq
    (cd "$dir/debs" && apt-get -qq -o APT::Sandbox::User=root download prometheus)
    for deb in "$dir"/debs/*.deb; do
        dpkg -x "$deb" "$dir/root"
    done
    local tool
    for tool in prometheus promtool; do
        if [ ! -x "$dir/root/usr/bin/$tool" ] || ! "$dir/root/usr/bin/$tool" --version >/dev/null 2>&1; then
            echo "monitoring_tools.sh: no working /usr/bin/$tool in Debian's prometheus package" >&2
            return 1
        fi
    done
    if ! "$dir/root/usr/bin/promtool" test rules --help >/dev/null 2>&1; then
        echo "monitoring_tools.sh: this promtool has no 'test rules'" >&2
        return 1
    fi
    rm -rf "$dir/debs"
    touch "$dir/done"
}

fetch_check_jsonschema() {
    if "$VENV/bin/check-jsonschema" --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
        return 0
    fi
    echo "Installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $VENV"
    "$VENV/bin/pip" install -q "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    if ! "$VENV/bin/check-jsonschema" --version >/dev/null; then
        echo "monitoring_tools.sh: check-jsonschema does not run from $VENV/bin" >&2
        return 1
    fi
}

fetch_pyyaml() {
    if "$VENV/bin/python" -c "import yaml" 2>/dev/null; then
        return 0
    fi
    echo "Installing PyYAML $PYYAML_VERSION into $VENV"
    "$VENV/bin/pip" install -q "PyYAML==$PYYAML_VERSION"
    "$VENV/bin/python" -c "import yaml" || { echo "monitoring_tools.sh: PyYAML does not import" >&2; return 1; }
}

fetch_prometheus
fetch_check_jsonschema
fetch_pyyaml
