# Registry clients that Debian 12 lacks, unpacked from Debian 13 (trixie) the way scripts/engines.sh
# unpacks engines (its unpack_debs; source engines.sh first): oras 1.2, a static Go binary, for
# OCI artifacts and the referrers fallback tag (tests/test_registry_oras.py). Sourced by
# scripts/test; fails loudly if a package cannot be had, so a test tier never goes missing
# silently. Lands in $CACHEMESH_TOOLS/<suite>/root (default /var/cache/cachemesh/tools), reused by
# later runs.

CACHEMESH_TOOLS="${CACHEMESH_TOOLS:-/var/cache/cachemesh/tools}"
export CACHEMESH_TOOLS

fetch_tool() {
    local suite="$1" binary="$2"; shift 2
    local dir="$CACHEMESH_TOOLS/$suite"
    if [ -x "$dir/root/$binary" ] && [ -f "$dir/done" ]; then
        return 0
    fi
    echo "Fetching $* from Debian $suite into $dir"
    unpack_debs "$suite" "$dir" "$@"
    if [ ! -x "$dir/root/$binary" ] || ! "$dir/root/$binary" version >/dev/null; then
        echo "tools.sh: no working /$binary in Debian $suite's packages ($*)" >&2
        return 1
    fi
    touch "$dir/done"
}

fetch_tool trixie usr/bin/oras oras
