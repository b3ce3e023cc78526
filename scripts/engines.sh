# Unpacks newer Docker Engines next to Debian 12's, without touching the system's packages or
# sources: Debian 13's 26.1 and Debian unstable's newest (28.5 at the time of writing), each with
# its CLI and buildx. Sourced by scripts/test after setup.sh; fails loudly if a package cannot be
# had, because the engine matrix must never shrink silently.
#
# Each engine lands in $CACHEMESH_ENGINES/<suite>/root (default /var/cache/cachemesh/engines) and
# is reused by later runs. Debian 12's runc (and for 26.1 its containerd) serve them: unstable's
# runc needs a newer glibc than Debian 12 has.

CACHEMESH_ENGINES="${CACHEMESH_ENGINES:-/var/cache/cachemesh/engines}"
export CACHEMESH_ENGINES

# Downloads PACKAGES from Debian SUITE with apt sources, lists and cache of their own under DIR,
# and unpacks them into DIR/root (no dpkg database, no maintainer scripts).
unpack_debs() {
    local suite="$1" dir="$2"; shift 2
    rm -rf "$dir/root" "$dir/debs"
    mkdir -p "$dir/etc" "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/root"
    cat >"$dir/etc/$suite.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    local opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$dir/etc"
                -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "Debug::NoLocking=1"
                -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" -qq update
    (cd "$dir/debs" && apt-get "${opts[@]}" -qq download "$@")
    for deb in "$dir"/debs/*.deb; do
        dpkg -x "$deb" "$dir/root"
    done
}

fetch_engine() {
    local suite="$1"; shift
    local dir="$CACHEMESH_ENGINES/$suite"
    if [ -x "$dir/root/usr/sbin/dockerd" ] && [ -f "$dir/done" ]; then
        return 0
    fi
    echo "Fetching Docker Engine packages from Debian $suite into $dir: $*"
    unpack_debs "$suite" "$dir" "$@"
    if [ ! -x "$dir/root/usr/sbin/dockerd" ]; then
        echo "engines.sh: no dockerd in Debian $suite's packages ($*)" >&2
        return 1
    fi
    touch "$dir/done"
}

fetch_engine trixie docker.io docker-cli docker-buildx
fetch_engine sid docker.io docker-cli containerd docker-buildx
