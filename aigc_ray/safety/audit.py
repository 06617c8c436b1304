"""Every decision of the safety filter, as JSONL audit records: one file per request under
``layout.safety_audit_uri`` (written atomically, like feedback shards, so a crash never leaves
half a record and readers list the folder). A record names the request, the stage (prompt or
output), the scores, the action and the policy version, and the text's SHA-256; the text itself
only when it was flagged, and then redacted (never the words that were blocked)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone

from ..storage import Storage, join
from .moderator import Verdict, redact


def audit_record(
    request_id: str, route: str, stage: str, text: str, verdict: Verdict, action: str, policy_version: str
) -> dict:
    """What the filter decided about one text (``action``: what was done: pass, block, redact or log)."""
    return {
        "request_id": request_id,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "route": route,
        "stage": stage,  # prompt | output
        "flagged": verdict.flagged,
        "categories": sorted(c for c, hit in verdict.categories.items() if hit),
        "scores": {c: round(s, 6) for c, s in verdict.category_scores.items()},
        "action": action,
        "policy_version": policy_version,
        "sha256": hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest(),
        "chars": len(text),
        "redacted": redact(text, verdict) if verdict.flagged else None,
    }


def write_audit(storage: Storage, uri: str, records: list[dict]) -> str:
    """One request's records as one JSONL file; returns its URI."""
    stamp = records[0]["created_at"].replace("-", "").replace(":", "").replace(".", "")
    path = join(uri, f"part-{stamp}-{uuid.uuid4().hex[:12]}.jsonl")
    storage.write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    return path


def read_audit(storage: Storage, uri: str) -> list[dict]:
    """Every audit record under ``uri``, oldest first."""
    rows = [
        json.loads(line)
        for f in storage.list_files(uri, ".jsonl")
        for line in storage.read_bytes(f).decode().splitlines()
        if line.strip()
    ]
    return sorted(rows, key=lambda r: r["created_at"])
