"""The share rule (mesh.protocol.share), on histories as the real engines report them
(docs/engines.md, "What an image's history says")."""

from __future__ import annotations

from mesh.engine.base import chain_ids
from mesh.protocol.share import Candidate, Step, decide_rule, instruction, share_manifest, step_layers
from mesh.protocol.wire import ImageMeta

BK = "buildkit.dockerfile.v0"

# `docker history` of one Dockerfile on Engine 28.5 overlay2 (sizes as that store reports them):
#   FROM base:1 / LABEL a=b / ENV X=1 / WORKDIR /app / COPY deps.txt /app/ / RUN cat ... /
#   RUN true / ADD code.txt /app/ / RUN cp ... / CMD [...]
CLASSIC = [
    Step("", 1982333, comment="Imported from -"),
    Step("/bin/sh -c #(nop)  LABEL a=b", 0),
    Step("/bin/sh -c #(nop)  ENV X=1", 0),
    Step("/bin/sh -c #(nop) WORKDIR /app", 0),  # a layer (the directory), of 0 bytes
    Step("/bin/sh -c #(nop) COPY file:f8f7d0b9 in /app/ ", 5),
    Step("/bin/sh -c cat /app/deps.txt > /app/installed", 5),
    Step("/bin/sh -c true", 0),  # the classic builder drops an empty diff: no layer
    Step("/bin/sh -c #(nop) ADD file:10bbd59e in /app/ ", 5),
    Step("/bin/sh -c cp /app/code.txt /app/built", 5),
    Step('/bin/sh -c #(nop)  CMD ["cat" "/app/built"]', 0),
]
CLASSIC_LAYERS = [0, None, None, 1, 2, 3, None, 4, 5, None]
BUILDKIT = [
    Step("", 1982333, comment="Imported from -"),
    Step("LABEL a=b", 0, comment=BK),
    Step("ENV X=1", 0, comment=BK),
    Step("WORKDIR /app", 0, comment=BK),
    Step("COPY deps.txt /app/ # buildkit", 5, comment=BK),
    Step("RUN /bin/sh -c cat /app/deps.txt > /app/installed # buildkit", 5, comment=BK),
    Step("RUN /bin/sh -c true # buildkit", 0, comment=BK),  # BuildKit keeps an empty layer
    Step("ADD code.txt /app/ # buildkit", 5, comment=BK),
    Step("RUN /bin/sh -c cp /app/code.txt /app/built # buildkit", 5, comment=BK),
    Step('CMD ["cat" "/app/built"]', 0, comment=BK),
]
BUILDKIT_LAYERS = [0, None, None, 1, 2, 3, 4, 5, 6, None]


def test_instructions_of_both_builders():
    assert [instruction(s) for s in CLASSIC] == [
        "", "LABEL", "ENV", "WORKDIR", "COPY", "RUN", "RUN", "ADD", "RUN", "CMD",
    ]  # fmt: skip
    assert [instruction(s) for s in BUILDKIT] == [
        "", "LABEL", "ENV", "WORKDIR", "COPY", "RUN", "RUN", "ADD", "RUN", "CMD",
    ]  # fmt: skip
    assert instruction(Step("|1 VERSION=2 /bin/sh -c make", 3)) == "RUN"


def test_steps_map_onto_layers_with_zero_sized_layers_told_apart_by_the_count():
    assert step_layers(CLASSIC, 6, {}) == CLASSIC_LAYERS
    assert step_layers(BUILDKIT, 7, {}) == BUILDKIT_LAYERS


def test_an_intermediate_image_fixes_the_count_where_sizes_cannot():
    # Two classic RUNs of 0 bytes, one of which made a layer (a `mkdir`): only the intermediate
    # image of the first tells which.
    steps = [
        Step("", 10, image="sha256:base"),
        Step("/bin/sh -c mkdir /x", 0, image="sha256:one"),
        Step("/bin/sh -c true", 0, image="sha256:two"),
    ]
    assert step_layers(steps, 2, {}) is None  # ambiguous without it
    assert step_layers(steps, 2, {"sha256:base": 1, "sha256:one": 2, "sha256:two": 2}) == [0, 1, None]


def test_a_history_that_cannot_be_the_layers_is_refused():
    assert step_layers(CLASSIC, 9, {}) is None
    assert step_layers(CLASSIC, 3, {}) is None


def chains(n: int, tag: str = "") -> list[str]:
    return chain_ids([f"sha256:{tag}{i:063x}" for i in range(n)])


def test_the_rule_on_a_typical_app():
    # Layers: 0 base, 1 WORKDIR, 2 COPY deps, 3 RUN install, 4 RUN true (BuildKit), 5 ADD code, 6 RUN build
    base_only = set(chains(1))
    first_build = decide_rule(BUILDKIT, chains(7), base_only, 1, {})
    assert first_build.share and first_build.code == "deps"
    assert "WORKDIR /app" in first_build.reason

    deps_held = set(chains(5))  # a code-only rebuild: new from the ADD of the code
    code_only = decide_rule(BUILDKIT, chains(5) + _new_tail(5, 7), deps_held, 1, {})
    assert not code_only.share and code_only.code == "code"
    assert "ADD code.txt" in code_only.reason

    after_copy = decide_rule(BUILDKIT, chains(7)[:6] + _new_tail(6, 7), set(chains(6)), 1, {})
    assert not after_copy.share and "after the last ADD code.txt" in after_copy.reason

    deps_changed = decide_rule(BUILDKIT, chains(3) + _new_tail(3, 7), set(chains(3)), 1, {})
    assert deps_changed.share and "RUN /bin/sh -c cat" in deps_changed.reason

    everything_held = decide_rule(BUILDKIT, chains(7), set(chains(7)), 1, {})
    assert everything_held.share and everything_held.code == "no-new-layers"


def _new_tail(start: int, end: int) -> list[str]:
    """Chain IDs of layers start..end-1 after a change at `start`: none of them is held anywhere."""
    return [f"sha256:{'e' * 56}{i:08x}" for i in range(start, end)]


def test_a_base_image_is_shared_even_with_a_root_filesystem_add():
    debian = [Step("/bin/sh -c #(nop) ADD file:abc in / ", 100), Step('/bin/sh -c #(nop)  CMD ["bash"]', 0)]
    assert decide_rule(debian, chains(1), set(), 0, {}).code == "base"
    with_deps = [*debian, Step("/bin/sh -c apt-get install -y gcc", 50)]
    decision = decide_rule(with_deps, chains(2), set(chains(1)), 1, {})
    assert decision.share and decision.code == "base"


def test_copy_steps_of_the_from_image_are_not_the_images_own():
    # FROM node (which COPYs its entrypoint), then RUN npm install -g: a base of its own.
    node = [
        Step("/bin/sh -c #(nop) ADD file:abc in / ", 100),
        Step("/bin/sh -c #(nop) COPY file:entry in /usr/local/bin/ ", 1),
        Step("/bin/sh -c npm install -g pnpm", 40),
    ]
    assert decide_rule(node, chains(3), set(chains(2)), 2, {}).code == "base"
    assert decide_rule(node, chains(3), set(chains(2)), 0, {}).code == "code"  # had it counted


def meta(image: str, layers: list[str], created: int, parent: str = "") -> ImageMeta:
    return ImageMeta(image, parent, tuple(layers), 100, created)


def candidate(
    m: ImageMeta,
    tags: list[str] | None = None,
    steps: list[Step] | None = None,
    labels: dict[str, str] | None = None,
    from_mesh: bool = False,
) -> Candidate:
    return Candidate(m, tuple(tags or ()), tuple(chain_ids(m.layers)), labels or {}, steps, from_mesh)


def test_share_manifest_decides_oldest_first_and_counts_its_own_shared_layers():
    layers = [f"sha256:{i:064x}" for i in range(8)]
    code2 = "sha256:" + "c" * 64
    base = meta("sha256:" + "1" * 64, layers[:1], 1)
    app1 = meta("sha256:" + "2" * 64, layers[:7], 2)
    app2 = meta("sha256:" + "3" * 64, [*layers[:5], code2, layers[7]], 3)
    shared, metas, decisions = share_manifest(
        [
            candidate(app2, ["app:2"], BUILDKIT),
            candidate(base, ["base:1"], [Step("", 10, comment="Imported from -")]),
            candidate(app1, ["app:1"], BUILDKIT),
        ],
        mode="deps",
        in_mesh=set(),
    )
    assert decisions[base.id].code == "base"
    assert decisions[app1.id].code == "deps"
    assert decisions[app2.id].code == "code" and not decisions[app2.id].share
    assert set(shared) == {base.id, app1.id} and set(metas) == set(shared)

    shared_all, _, all_decisions = share_manifest(
        [candidate(app1, ["app:1"], BUILDKIT), candidate(app2, ["app:2"], BUILDKIT)],
        mode="all",
        in_mesh=set(),
    )
    assert set(shared_all) == {app1.id, app2.id} and all_decisions[app2.id].code == "all"


def test_label_opt_out_include_exclude_and_images_from_the_mesh():
    layers = [f"sha256:{i:064x}" for i in range(3)]
    private = meta("sha256:" + "4" * 64, layers, 1)
    excluded = meta("sha256:" + "5" * 64, layers[:2], 2)
    pulled = meta("sha256:" + "6" * 64, layers[:1], 3)
    shared, _, decisions = share_manifest(
        [
            candidate(private, ["p:1"], [], labels={"cachemesh.share": "false"}, from_mesh=True),
            candidate(excluded, ["secret:1"], []),
            candidate(pulled, ["pulled:1"], [], from_mesh=True),
        ],
        mode="all",
        in_mesh=set(),
        exclude=["secret:*"],
    )
    assert decisions[private.id].reason == "label cachemesh.share=false"
    assert decisions[excluded.id].code == "excluded"
    assert decisions[pulled.id].code == "mesh"
    assert set(shared) == {pulled.id}


def test_unknown_history_is_shared_and_parents_of_shared_images_are_announced_untagged():
    parent = meta("sha256:" + "7" * 64, ["sha256:" + "a" * 64], 1)
    child = meta("sha256:" + "8" * 64, ["sha256:" + "a" * 64, "sha256:" + "b" * 64], 2, parent=parent.id)
    dangling = meta("sha256:" + "d" * 64, ["sha256:" + "e" * 64], 3)  # untagged, no shared child: private
    shared, _, decisions = share_manifest(
        [candidate(parent), candidate(child, ["c:1"], None), candidate(dangling)], mode="deps", in_mesh=set()
    )
    assert decisions[child.id].code == "unmapped"
    assert shared == {child.id: ("c:1",), parent.id: ()}


def test_a_decision_to_share_sticks_unless_the_label_or_globs_withdraw_it():
    layers = [f"sha256:{i:064x}" for i in range(7)]
    app = meta("sha256:" + "9" * 64, layers, 1)
    first = share_manifest([candidate(app, ["app:1"], BUILDKIT)], mode="deps", in_mesh=set(chains(1)))[2]
    assert first[app.id].code == "deps"
    # Later another host's code-only sibling makes this image look like a code-only one; it stays.
    deps_held = set(chain_ids(layers[:5]))
    again = share_manifest(
        [candidate(app, ["app:1"], BUILDKIT)], mode="deps", in_mesh=deps_held, previous=first
    )
    assert again[2][app.id] == first[app.id] and app.id in again[0]
    withdrawn = share_manifest(
        [candidate(app, ["app:1"], BUILDKIT)], mode="deps", in_mesh=set(), exclude=["app:*"], previous=first
    )
    assert withdrawn[2][app.id].code == "excluded" and app.id not in withdrawn[0]
