"""How the committed ensemble and each of its members hold up under adversarial pixels.

For each attack of ``spec.robustness`` (FGSM, PGD) and each ε, the first ``examples`` rows of the
test split are attacked on the image alone, twice: with their own captions, and with a caption
that names nothing (the data's vague caption: otherwise a caption that names the class carries
the answer whatever the pixels, and the attack measures nothing). A member is attacked through
its own logits. The ensemble is attacked through the log of its members' probabilities weighted
as it weighs them (exactly its output for mean and weighted; for vote and stacking a
differentiable stand-in) and scored by its own combination rule.

The result is an artifact of its own under ``<root>/<name>/robustness`` (``robustness.json``
and the accuracy-against-ε curves as ``curves.png``), its manifest naming the ensemble it
attacked; the report shows the curves and the server's ``/v1/models`` each member's figures.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.arrays import shard_arrays
from ..data.captions import encode_captions
from ..data.digits import baseline_caption
from ..layout import ensemble_dir, multimodal_uri, robustness_dir
from ..manifest import publish_directory, read_manifest
from ..models.robustness import accuracy_under_attack
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage, join
from ..tracking import tracked_run
from .build import load_ensemble

RESULTS_FILE = "robustness.json"
ENSEMBLE = "ensemble"


@dataclass
class RobustnessReport:
    uri: str
    results: dict  # captions -> attack -> member or "ensemble" -> {ε: accuracy}

    def table(self) -> str:
        lines = []
        for captions, by_attack in self.results.items():
            for attack, by_who in by_attack.items():
                epsilons = list(next(iter(by_who.values())))
                lines.append(f"{attack} ({captions} captions)  " + "  ".join(f"ε={e:g}" for e in epsilons))
                for who, accs in by_who.items():
                    lines.append(f"  {who:<14}" + "  ".join(f"{a:>6.3f}" for a in accs.values()))
        return "\n".join(lines)


def evaluate_robustness(spec: ExperimentSpec, storage: Storage, log=print) -> RobustnessReport:
    """Attack the committed ensemble and its members; commit and return the accuracies."""
    r = spec.robustness
    ens = load_ensemble(storage, ensemble_dir(spec))
    test = shard_arrays(storage, multimodal_uri(spec), "test")
    n = min(r.examples, len(test["label"]))
    images, labels = test["image"][:n], test["label"][:n]
    vague = baseline_caption(ens.classes)
    options = {"steps": r.pgd_steps, "step_size": r.pgd_step_size, "restarts": r.restarts, "seed": r.seed}
    weights = torch.tensor(ens.combiner.weights, dtype=torch.float32)
    for m in ens.models:
        m.requires_grad_(False)  # gradients flow to the pixels only
    results: dict = {}
    for captions in ("given", "vague"):
        texts = [str(t) for t in test["text"][:n]] if captions == "given" else [vague] * n
        encoded = [
            tuple(
                torch.from_numpy(a)
                for a in encode_captions(texts, c["tokenizer"], storage, int(c["max_text_tokens"]))[:2]
            )
            for c in ens.configs
        ]

        def member_logits(i: int, enc=encoded):
            def at(rows: slice):
                ids, mask = enc[i][0][rows], enc[i][1][rows]
                return lambda x: ens.models[i](x, ids, mask)

            return at

        def member_probs(x, rows: slice, enc=encoded) -> torch.Tensor:
            """(M, N, C): each member's probabilities for images ``x`` of those rows, their captions."""
            return torch.stack(
                [torch.softmax(m(x, enc[i][0][rows], enc[i][1][rows]), -1) for i, m in enumerate(ens.models)]
            )

        def ensemble_logits(rows: slice):
            return lambda x: torch.log(torch.einsum("m,mnc->nc", weights, member_probs(x, rows)).clamp_min(1e-12))

        def ensemble_answer(rows: slice):
            return lambda x: ens.combiner(member_probs(x, rows).numpy()).argmax(1)

        results[captions] = {}
        for attack in r.attacks:
            by_who = {
                name: accuracy_under_attack(member_logits(i), images, labels, r.epsilons, attack, **options)
                for i, name in enumerate(ens.names)
            }
            by_who[ENSEMBLE] = accuracy_under_attack(
                ensemble_logits, images, labels, r.epsilons, attack, answer_for=ensemble_answer, **options
            )
            results[captions][attack] = by_who
            log(
                f"[robustness] {attack}, {captions} captions: ensemble "
                + ", ".join(f"{acc:.3f} at ε={eps:g}" for eps, acc in by_who[ENSEMBLE].items())
            )
    uri = robustness_dir(spec)
    doc = {
        "examples": n,
        "epsilons": r.epsilons,
        "attacks": r.attacks,
        "options": options,
        "vague_caption": vague,
        "results": {
            c: {a: {w: {str(e): v for e, v in accs.items()} for w, accs in ws.items()} for a, ws in by_a.items()}
            for c, by_a in results.items()
        },
    }
    with tempfile.TemporaryDirectory(prefix="aigc-robustness-") as tmp:
        out = Path(tmp)
        (out / RESULTS_FILE).write_text(json.dumps(doc, indent=2))
        (out / "curves.png").write_bytes(_curves_png(results, r.epsilons))
        ensemble = ensemble_dir(spec)
        publish_directory(
            storage,
            out,
            uri,
            kind="robustness",
            spec_hash=spec_hash(spec, "data", "fusion", "ensemble", "robustness"),
            inputs={ensemble: read_manifest(storage, ensemble).fingerprint},
            meta={
                "examples": n,
                "ensemble": {a: results["vague"][a][ENSEMBLE] for a in r.attacks},
            },
        )
    with tracked_run(spec, "robustness", params=r.model_dump()) as run:
        if run is not None:  # beside the ensemble's own metrics: robust_accuracy.<captions>.<attack>.<who>.<ε>
            run.log_metrics({"robust_accuracy": doc["results"]})
            run.set_tags({"aigc.artifact": uri})
    report = RobustnessReport(uri, results)
    log(f"[robustness] -> {uri}\n{report.table()}")
    return report


def read_robustness(storage: Storage, uri: str) -> dict | None:
    """The committed results at ``uri`` (``robustness.json``), or None if there are none."""
    if read_manifest(storage, uri) is None:
        return None
    return json.loads(storage.read_bytes(join(uri, RESULTS_FILE)))


def _curves_png(results: dict, epsilons: list[float]) -> bytes:
    """Accuracy against ε: a panel per attack, a line per member and the ensemble (bold), solid with
    the given captions, dashed with the vague one."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(results["given"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 3.6), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        for captions, style in (("given", "-"), ("vague", "--")):
            for k, (who, accs) in enumerate(results[captions][attack].items()):
                bold = who == ENSEMBLE
                ax.plot(
                    list(accs),
                    list(accs.values()),
                    style,
                    color="black" if bold else f"C{k}",
                    linewidth=2.2 if bold else 1.0,
                    label=f"{who} ({captions} captions)",
                )
        ax.set_title(f"{attack.upper()} on the image")
        ax.set_xlabel("ε (L∞, pixels in [0, 1])")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
