"""Which local images this node announces to the mesh, and why. Pure.

The rule (`--share deps`, the default) spreads an image only when it helps other hosts' builds:
when its first layer that the mesh does not hold yet was made by a step before the image's last
ADD/COPY, which means a dependency step changed. An image whose only new layers come from the
final ADD/COPY and the steps after it (a code-only rebuild) stays on the host that built it. An
image with no ADD/COPY of its own (a base) is spread. `--share all` spreads every allowed tag.
Whatever the mode, the label `cachemesh.share=false` keeps an image local, and `--include` /
`--exclude` apply as before. Images the mesh brought here are shared content: re-announced.

Which step made which layer is worked out from the image's history (docs/engines.md has what the
engines report): the Engine API's history gives each step's command, the size of the layer it made
(0 also for a step that made no layer) and, for classic-builder steps, the intermediate image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mesh.protocol.planner import ancestors, tag_allowed
from mesh.protocol.wire import ImageMeta, Tags

SHARE_MODES = ("deps", "all")
OPT_OUT_LABEL = "cachemesh.share"


@dataclass(frozen=True, slots=True)
class Step:
    """One entry of an image's history, oldest first, as the engine reports it."""

    created_by: str
    size: int
    """Bytes of the layer the step made; 0 when it made none, or an empty one."""
    image: str = ""
    """The mesh key of the image this step produced, when the engine names one (classic builder
    steps whose intermediate image is held here), else ""."""
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    share: bool
    reason: str
    """For people: why, naming the step that decided it."""
    code: str
    """For metrics: base, deps, code, no-new-layers, label, excluded, all, mesh, unmapped."""


_NOP = re.compile(r"#\(nop\)\s+(\w+)")
_INSTRUCTION = re.compile(r"^\s*(\w+)")
_LAYER_MAKERS = {"RUN", "COPY", "ADD", "WORKDIR"}


def instruction(step: Step) -> str:
    """The Dockerfile instruction behind a step: classic builder `/bin/sh -c #(nop) COPY ...` (a
    RUN is `/bin/sh -c CMD`, or `|N ARG=... /bin/sh -c CMD` with build args), BuildKit `COPY ...
    # buildkit`, `RUN /bin/sh -c ... # buildkit`, `ENV ...`; an import or commit has none ("")."""
    text = step.created_by
    nop = _NOP.search(text)
    if nop:
        return nop.group(1).upper()
    if not text.strip():
        return ""
    if is_buildkit(step):
        match = _INSTRUCTION.match(text)
        return match.group(1).upper() if match else "RUN"
    return "RUN"  # the classic builder records a RUN as the command line itself


def is_buildkit(step: Step) -> bool:
    return step.comment.startswith("buildkit.") or step.created_by.rstrip().endswith("# buildkit")


def is_copy(step: Step) -> bool:
    return instruction(step) in ("COPY", "ADD")


def _may_make_layer(step: Step) -> bool:
    return instruction(step) in _LAYER_MAKERS or not step.created_by.strip()


def _rank(step: Step) -> int:
    """How likely a step that reports 0 bytes still made a layer: BuildKit commits a layer for
    every RUN, COPY, ADD and WORKDIR even when it is empty; the classic builder drops an empty
    diff (a `RUN true`) but a WORKDIR, COPY or ADD that made only a directory is a layer."""
    if is_buildkit(step):
        return 2
    return 1 if instruction(step) in ("WORKDIR", "COPY", "ADD") else 0


def step_layers(
    steps: Sequence[Step], layer_count: int, layers_of: Mapping[str, int]
) -> list[int | None] | None:
    """For each step, the index of the layer it made (None: it made none), or None when the history
    cannot be matched to the layers.

    A step with a size made a layer; a metadata step (ENV, CMD, LABEL, ...) made none. A step that
    reports 0 bytes is ambiguous, so the count decides: between two points where the number of
    layers is known (a step whose image is held here, `layers_of`; the end: `layer_count`), exactly
    that many layers were made, and the most likely makers (see _rank) take the ones sizes leave."""
    checkpoints: list[tuple[int, int]] = []  # (step index, layers up to and including it)
    for index, step in enumerate(steps):
        if step.image and step.image in layers_of:
            checkpoints.append((index, layers_of[step.image]))
    checkpoints.append((len(steps) - 1, layer_count))
    made = [False] * len(steps)
    start, done = 0, 0
    for end, total in checkpoints:
        if end < start:
            continue
        segment = range(start, end + 1)
        need = total - done
        sure = [i for i in segment if steps[i].size > 0]
        maybe = [i for i in segment if steps[i].size <= 0 and _may_make_layer(steps[i])]
        extra = need - len(sure)
        if extra < 0 or extra > len(maybe):
            return None
        for i in sure:
            made[i] = True
        chosen = maybe if extra == len(maybe) else []
        if 0 < extra < len(maybe):
            ranked = sorted(maybe, key=lambda i: -_rank(steps[i]))
            if _rank(steps[ranked[extra - 1]]) == _rank(steps[ranked[extra]]):
                return None  # two equally likely makers for one layer: cannot tell which
            chosen = ranked[:extra]
        for i in chosen:
            made[i] = True
        start, done = end + 1, total
    out: list[int | None] = []
    count = 0
    for flag in made:
        out.append(count if flag else None)
        count += flag
    return out if count == layer_count else None


def decide_rule(
    steps: Sequence[Step],
    chains: Sequence[str],
    in_mesh: set[str],
    own_from: int,
    layers_of: Mapping[str, int],
) -> Decision:
    """The `deps` rule for one image. chains: its layers' chain IDs (mesh.engine.base.chain_ids);
    in_mesh: chain IDs the mesh holds; own_from: how many leading layers come from the image it
    was built FROM (its ADD/COPY steps there are not its own)."""
    first_new = next((i for i, chain in enumerate(chains) if chain not in in_mesh), None)
    if first_new is None:
        return Decision(True, "no new layers: the mesh holds every layer", "no-new-layers")
    mapping = step_layers(steps, len(chains), layers_of)
    if mapping is None:
        return Decision(True, "history does not match the layers: shared to be safe", "unmapped")
    by_layer = {layer: steps[i] for i, layer in enumerate(mapping) if layer is not None}
    # Layer 0 is the root filesystem: a base image's `ADD rootfs.tar /` is not application code.
    copies = [layer for layer, step in by_layer.items() if layer >= max(own_from, 1) and is_copy(step)]
    new_step = _short(by_layer[first_new])
    if not copies:
        return Decision(True, f"base image (no ADD/COPY of its own); new from: {new_step}", "base")
    last_copy = max(copies)
    if first_new < last_copy:
        return Decision(True, f"dependency step changed: {new_step}", "deps")
    if first_new == last_copy:
        return Decision(False, f"only code changed: new from the last {new_step}", "code")
    return Decision(
        False,
        f"only steps after the last {_short(by_layer[last_copy])} changed: new from {new_step}",
        "code",
    )


_LONG_HEX = re.compile(r"([0-9a-f]{12})[0-9a-f]{20,}")


def _short(step: Step, limit: int = 80) -> str:
    """A step for people: `COPY file:cdd15dab36f4 in /app/`, `RUN /bin/sh -c pip install ...`."""
    text = " ".join(step.created_by.replace("/bin/sh -c #(nop) ", "").split())
    text = _LONG_HEX.sub(r"\1", text)
    text = text.removesuffix(" # buildkit") or "(import)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One local image, with what the rule needs to know about it."""

    meta: ImageMeta
    tags: Tags
    chains: tuple[str, ...]
    labels: Mapping[str, str]
    steps: Sequence[Step] | None
    """None when the history is not known (yet): the image is then shared, as before the rule."""
    from_mesh: bool
    """The mesh brought it here: shared content, announced again whatever the rule says."""


def base_layers(image: ImageMeta, tagged: Mapping[tuple[str, ...], str]) -> int:
    """How many leading layers `image` has from the image it was built FROM: the longest other
    tagged image here (`tagged`: layers -> image ID) whose layers are a strict prefix of its own."""
    for n in range(len(image.layers) - 1, 0, -1):
        other = tagged.get(image.layers[:n])
        if other is not None and other != image.id:
            return n
    return 0


def decide(
    candidate: Candidate,
    *,
    mode: str,
    allowed: Tags,
    in_mesh: set[str],
    own_from: int,
    layers_of: Mapping[str, int],
) -> Decision:
    if candidate.labels.get(OPT_OUT_LABEL, "").strip().lower() == "false":
        return Decision(False, f"label {OPT_OUT_LABEL}=false", "label")
    if not allowed:
        return Decision(False, "excluded by --include/--exclude", "excluded")
    if candidate.from_mesh:
        return Decision(True, "brought by the mesh", "mesh")
    if mode == "all":
        return Decision(True, "--share all", "all")
    if candidate.steps is None:
        return Decision(True, "history not read yet: shared to be safe", "unmapped")
    return decide_rule(candidate.steps, candidate.chains, in_mesh, own_from, layers_of)


def share_manifest(
    candidates: Iterable[Candidate],
    *,
    mode: str,
    in_mesh: set[str],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    previous: Mapping[str, Decision] | None = None,
) -> tuple[dict[str, Tags], dict[str, ImageMeta], dict[str, Decision]]:
    """What this node announces (image -> tags, with the parent chains of shared images as untagged
    entries), the metas of those, and the decision for every tagged image.

    Images are decided oldest first, and each shared one's layers count as held by the mesh for the
    ones after it: a code-only rebuild of an image shared a minute ago stays local. A decision to
    share sticks (with its first reason) while the image is here: the mesh then holds its layers,
    and peers may have pulled it, so withdrawing it would only make the mesh forget a source. The
    label and the include/exclude globs still withdraw it."""
    previous = previous or {}
    include, exclude = list(include), list(exclude)
    items = sorted(candidates, key=lambda c: (c.meta.created, c.meta.id))
    metas = {c.meta.id: c.meta for c in items}
    layers_of = {c.meta.id: len(c.meta.layers) for c in items}
    tagged = {c.meta.layers: c.meta.id for c in items if c.tags}
    held = set(in_mesh)
    shared: dict[str, Tags] = {}
    decisions: dict[str, Decision] = {}
    for c in items:
        if not c.tags:
            continue  # untagged: announced only as a shared image's parent
        allowed = tuple(sorted(t for t in c.tags if tag_allowed(t, include, exclude)))
        decision = decide(
            c,
            mode=mode,
            allowed=allowed,
            in_mesh=held,
            own_from=base_layers(c.meta, tagged),
            layers_of=layers_of,
        )
        before = previous.get(c.meta.id)
        if before is not None and before.share and decision.code not in ("label", "excluded"):
            decision = before
        decisions[c.meta.id] = decision
        if decision.share:
            shared[c.meta.id] = allowed
            held.update(c.chains)
    for image in list(shared):
        for parent in ancestors(image, metas):
            shared.setdefault(parent, ())
    return shared, {i: metas[i] for i in shared}, decisions
