"""The answers an ingress replica remembers so that feedback can refer to them by id.

Feedback on a classification is only useful as training data with the image and caption that
were classified, so the ingress keeps each answer's inputs. Those are bounded twice: in bytes
(``serve.feedback_memory_mb``: large images must not grow a replica without limit) and in count
(``serve.feedback_answers``). Over the byte bound the oldest answers lose their inputs first but
stay known (kind and answer, a few hundred bytes), so feedback on them is still accepted, with a
note that its inputs are gone; over the count bound the oldest answers are forgotten entirely.
"""

from __future__ import annotations

from collections import OrderedDict

INPUTS_EVICTED_NOTE = (
    "the inputs of this answer were no longer held (serve.feedback_memory_mb bounds them, oldest evicted "
    "first): the feedback is stored without them, so it cannot become a training example"
)


def _size(value) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    return len(value) if isinstance(value, bytes) else 0


class RecentAnswers:
    """An insertion-ordered map id -> record ``{"kind", "answer", **inputs}`` within two bounds."""

    def __init__(self, max_bytes: int, max_answers: int):
        self.max_bytes, self.max_answers = max_bytes, max_answers
        self.records: OrderedDict[str, dict] = OrderedDict()
        self.holding_inputs: OrderedDict[str, int] = OrderedDict()  # id -> bytes of its inputs, oldest first
        self.bytes = 0  # inputs' bytes held now (answers are small and bounded by the count)
        self.inputs_evicted = 0  # answers that lost their inputs, since start

    def add(self, rid: str, kind: str, answer: str, **inputs) -> None:
        if rid in self.records:
            self._forget(rid)
        self.records[rid] = {"kind": kind, "answer": answer, **inputs}
        held = sum(_size(v) for v in inputs.values())
        self.bytes += held
        if held:
            self.holding_inputs[rid] = held
        while len(self.records) > self.max_answers:
            self._forget(next(iter(self.records)))
        while self.bytes > self.max_bytes and self.holding_inputs:
            self._drop_inputs(next(iter(self.holding_inputs)))

    def get(self, rid: str) -> dict | None:
        """The record (``inputs_evicted: True`` when its inputs were dropped), or None if unknown."""
        return self.records.get(rid)

    def stats(self) -> dict:
        return {
            "answers": len(self.records),
            "with_inputs": len(self.holding_inputs),
            "input_bytes": self.bytes,
            "max_input_bytes": self.max_bytes,
            "max_answers": self.max_answers,
            "inputs_evicted": self.inputs_evicted,
        }

    def _drop_inputs(self, rid: str) -> None:
        record = self.records[rid]
        self.bytes -= self.holding_inputs.pop(rid)
        self.records[rid] = {"kind": record["kind"], "answer": record["answer"], "inputs_evicted": True}
        self.inputs_evicted += 1

    def _forget(self, rid: str) -> None:
        self.records.pop(rid)
        self.bytes -= self.holding_inputs.pop(rid, 0)
