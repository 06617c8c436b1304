"""``aigc lineage URI``: where an artifact came from, as a tree of manifests.

Every committed artifact's manifest lists its inputs (URI -> fingerprint). Following them gives
the chain: a served ensemble -> its members' checkpoints, sweep trials, spec hashes and code
versions -> the shards and tokenizer they were trained on. An input whose current fingerprint
differs from the one recorded is marked: the artifact was made from an older version of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .manifest import read_manifest
from .storage import Storage, join


@dataclass
class Node:
    uri: str
    kind: str | None = None  # None: not a committed artifact (e.g. a Tune checkpoint folder)
    fingerprint: str | None = None
    recorded: str | None = None  # the fingerprint the child recorded for this input
    details: dict = field(default_factory=dict)
    parents: list[Node] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.recorded and self.fingerprint and self.recorded != self.fingerprint)


def lineage(storage: Storage, uri: str, recorded: str | None = None, depth: int = 6, seen: set | None = None) -> Node:
    """The lineage tree of the artifact at ``uri`` (inputs followed up to ``depth`` levels)."""
    seen = set() if seen is None else seen
    manifest = read_manifest(storage, uri)
    if manifest is None:
        return Node(uri, recorded=recorded)
    node = Node(
        uri,
        manifest.kind,
        manifest.fingerprint,
        recorded,
        {"spec_hash": manifest.spec_hash[:12], "code": manifest.code_version, "created": manifest.created_at},
    )
    if manifest.kind.startswith("ensemble"):
        node.details["members"] = _members(storage, uri)
    if uri in seen or depth == 0:
        return node
    seen.add(uri)
    node.parents = [lineage(storage, u, fp, depth - 1, seen) for u, fp in sorted(manifest.inputs.items())]
    return node


def _members(storage: Storage, uri: str) -> list[str]:
    doc = json.loads(storage.read_bytes(join(uri, "ensemble.json")))
    out = []
    for m in doc["members"]:
        lin = m["lineage"]
        where = lin.get("checkpoint") or f"bootstrap seed {lin.get('bootstrap_seed')}"
        trial = f" trial {lin['sweep_trial']}" if "sweep_trial" in lin else ""
        tuned = " +feedback" if "finetuned_on_feedback" in lin else ""
        out.append(f"{m['name']} ({m['source']}{trial}{tuned}): {where}")
    return out


def format_tree(node: Node, prefix: str = "", last: bool = True, root: bool = True) -> str:
    branch = "" if root else ("└─ " if last else "├─ ")
    if node.kind is None:
        head = f"{node.uri}  (no manifest: a checkpoint or a path; recorded {(node.recorded or '?')[:12]})"
    else:
        flag = "  CHANGED since (recorded " + node.recorded[:12] + ")" if node.changed else ""
        d = node.details
        head = f"{node.kind}  {node.uri}  fp {node.fingerprint[:12]}  spec {d['spec_hash']}  code {d['code']}  {d['created']}{flag}"
    lines = [prefix + branch + head]
    child_prefix = prefix + ("" if root else ("   " if last else "│  "))
    for member in node.details.get("members", []):
        lines.append(child_prefix + "•  member " + member)
    for i, parent in enumerate(node.parents):
        lines.append(format_tree(parent, child_prefix, i == len(node.parents) - 1, root=False))
    return "\n".join(lines)
