# What the deployment tests (tests/test_deploy.py) need, each a real validator of the artifacts in
# deploy/: systemd-analyze (`verify`, `security --offline`) from Debian 12's systemd; shellcheck
# (Debian 12) for the shell that the cloud-init user data carries; cloud-init 25.1 from Debian 13
# (trixie) for `cloud-init schema`, whose schema refuses unknown keys (Debian 12's 22.4 lets them
# pass); and from PyPI the Helm 4 SDK (helm-python-sdk: renders the chart, no helm binary) and
# kubernetes-validate (the Kubernetes API's OpenAPI schemas, 1.25 to 1.37). Sourced by scripts/test
# after setup.sh ($VENV) and engines.sh (unpack_debs); fails loudly if a tool cannot be had, so
# the deployment tests never go missing silently.
#
# cloud-init is unpacked, not installed: installing it would make this machine run cloud-init at
# its next boot. It is pure Python and runs on Debian 12's python3 with Debian 12's packages of
# its dependencies (installed by scripts/test), from $CACHEMESH_TOOLS/cloud-init/root (default
# /var/cache/cachemesh/tools), reused by later runs; the tests look there.

CACHEMESH_TOOLS="${CACHEMESH_TOOLS:-/var/cache/cachemesh/tools}"
export CACHEMESH_TOOLS
CLOUD_INIT_SERIES="25.1"
HELM_PYTHON_SDK_VERSION="0.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"

cloud_init_run() {
    local root="$CACHEMESH_TOOLS/cloud-init/root"
    PYTHONPATH="$root/usr/lib/python3/dist-packages" /usr/bin/python3 "$root/usr/bin/cloud-init" "$@"
}

fetch_cloud_init() {
    local dir="$CACHEMESH_TOOLS/cloud-init"
    if [ -f "$dir/done" ] && cloud_init_run --version 2>&1 | grep -q " $CLOUD_INIT_SERIES\."; then
        return 0
    fi
    echo "Fetching cloud-init from Debian trixie into $dir"
    unpack_debs trixie "$dir" cloud-init
    local version
    if ! version="$(cloud_init_run --version 2>&1)"; then
        echo "deploy_tools.sh: Debian trixie's cloud-init does not run on /usr/bin/python3: $version" >&2
        return 1
    fi
    if ! grep -q " $CLOUD_INIT_SERIES\." <<<"$version"; then
        echo "deploy_tools.sh: expected cloud-init $CLOUD_INIT_SERIES from Debian trixie, got: $version" >&2
        return 1
    fi
    rm -rf "$dir/debs"
    touch "$dir/done"
}

check_debian_tools() {
    local tool
    for tool in systemd-analyze shellcheck; do
        if ! command -v "$tool" >/dev/null; then
            echo "deploy_tools.sh: $tool is not installed (scripts/test installs systemd and shellcheck)" >&2
            return 1
        fi
    done
    if ! systemd-analyze security --help 2>/dev/null | grep -q -- "--offline"; then
        echo "deploy_tools.sh: this systemd-analyze has no 'security --offline' (systemd 250 or later)" >&2
        return 1
    fi
}

fetch_python_tools() {
    if "$VENV/bin/python" -c "import helm_python, sys; sys.exit(helm_python.__version__ != '$HELM_PYTHON_SDK_VERSION')" 2>/dev/null \
        && "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
        return 0
    fi
    echo "Installing helm-python-sdk $HELM_PYTHON_SDK_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    "$VENV/bin/pip" install -q "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    if ! "$VENV/bin/python" -c "import helm_python; helm_python.helm_sdk_version()" >/dev/null; then
        echo "deploy_tools.sh: the Helm SDK (helm-python-sdk) does not load in $VENV" >&2
        return 1
    fi
    if ! "$VENV/bin/kubernetes-validate" --version >/dev/null; then
        echo "deploy_tools.sh: kubernetes-validate does not run from $VENV/bin" >&2
        return 1
    fi
}

check_debian_tools
fetch_cloud_init
fetch_python_tools
