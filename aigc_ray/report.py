"""The run report: one page a person would rather look at than read.

``layout.report_dir`` holds ``report.html`` (self-contained: the plots are embedded) and
``report.md`` (the same, with the PNGs beside it): what each stage did, the loss curves, the
sweeps' learning curves, the GAN's samples, the fusion model's confusion matrix, the ensemble
against its members, and the served answers. Everything is read back from the committed
artifacts, so a re-run that skipped every stage reports the same results.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from pathlib import Path

from . import layout
from .manifest import code_version, publish_directory, read_manifest
from .spec import ExperimentSpec, spec_hash
from .storage import Storage, join


def _sections(spec: ExperimentSpec, storage: Storage) -> list[tuple[str, list[str], list[tuple[str, bytes]]]]:
    """(title, Markdown lines, [(png name, bytes)]) per finished artifact."""
    from .ensemble.build import ENSEMBLE_FILE

    out = []
    for title, uri in (("Pretraining", layout.pretrain_export(spec)), ("Fine-tuning", layout.finetune_export(spec))):
        if read_manifest(storage, uri) is None:
            continue
        ev = json.loads(storage.read_bytes(join(uri, "eval.json")))
        samples = storage.read_bytes(join(uri, "samples.txt")).decode().strip().splitlines()
        lines = [
            f"Held-out loss **{ev.get('eval_loss', float('nan')):.3f}** (perplexity {ev.get('eval_perplexity', float('nan')):.1f}). Samples:",
            "",
        ]
        lines += [f"> {s}" for s in samples[:3]]
        if "class_agreement" in ev:
            lines += [
                "",
                f"Captions that name the class they were asked for: **{ev['class_agreement']:.0%}** "
                "(every class's prompt, one greedy and two sampled captions each).",
            ]
        out.append((title, lines, [(f"{title.lower()}-loss.png", storage.read_bytes(join(uri, "loss.png")))]))
    for family, title, pngs, extra_label in (
        ("gan", "GAN sweep", ("curves.png", "samples.png"), "Best generator's samples"),
        ("video", "Video sweep", ("curves.png", "strip.png"), "Best generator's clips"),
        ("fusion", "Fusion sweep", ("curves.png", "confusion.png"), "Best model on the test split"),
    ):
        uri = layout.sweep_results(spec, family)
        manifest = read_manifest(storage, uri)
        if manifest is None:
            continue
        best, metric = manifest.meta["best"], getattr(spec, family).sweep.metric
        extra = dict(manifest.meta.get("best_extra") or {})
        lines = [
            f"{manifest.meta['trials']} trials ({getattr(spec, family).sweep.scheduler}); best {metric} "
            f"**{best[metric]:.4f}** (trial {best['trial_id']}), {manifest.meta.get('total_steps', '?')} training steps in all."
        ]
        settings = {k: extra.pop(k) for k in ("real_fraction", "augment_ratio") if k in extra}
        if extra:
            lines.append(f"{extra_label}: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()) + ".")
        if settings:
            lines.append("Trained with " + ", ".join(f"{k} {v:g}" for k, v in settings.items()) + ".")
        lines += _by_choice(storage, uri, getattr(spec, family).sweep)
        out.append((title, lines, [(f"{family}-{p}", storage.read_bytes(join(uri, p))) for p in pngs]))
    uri = layout.ensemble_dir(spec)
    if read_manifest(storage, uri) is not None:
        doc = json.loads(storage.read_bytes(join(uri, ENSEMBLE_FILE)))
        lines = [
            f"Strategy **{doc['strategy']}**; weights " + ", ".join(f"{n} {w:.2f}" for n, w in doc["weights"].items()),
            "",
        ]
        lines += ["| | val accuracy | val macro-F1 | test accuracy | test macro-F1 |", "|---|---|---|---|---|"]
        names = [n for n in doc["metrics"]["val"] if n != "ensemble"] + ["ensemble"]
        for n in names:
            v, t = doc["metrics"]["val"][n], doc["metrics"]["test"][n]
            label = f"**{n}**" if n == "ensemble" else n
            lines.append(
                f"| {label} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} | {t['accuracy']:.4f} | {t['macro_f1']:.4f} |"
            )
        if doc.get("parent"):
            lines += ["", f"Refreshed from feedback ({doc['parent']['feedback']})."]
        out.append(("Ensemble vs members", lines, []))
        out.append(_explanations(spec, storage, uri))
    robust = _robustness(spec, storage)
    if robust:
        out.append(robust)
    safety = _safety(spec, storage)
    if safety:
        out.append(("Safety filter", safety, []))
    return out


def _explanations(spec: ExperimentSpec, storage: Storage, uri: str) -> tuple[str, list[str], list[tuple[str, bytes]]]:
    """Why the ensemble answers as it does on the test split: the image's average share of the
    decision per caption kind (exact Shapley values), and a grid of explained examples."""
    from .data.arrays import shard_arrays
    from .data.shards import split_table
    from .ensemble.explain import explained_test_examples, load_explainer

    mm = layout.multimodal_uri(spec)
    arrays = shard_arrays(storage, mm, "test")
    kinds = split_table(storage, mm, "test", ["caption_kind"])["caption_kind"].to_pylist()
    shares, shown, grid = explained_test_examples(load_explainer(storage, uri), arrays, kinds)
    lines = [
        "How much of the ensemble's decision came from the image and how much from the caption: the exact "
        "two-player Shapley values of its log-probability, against a black image and a caption that names "
        "nothing, averaged per caption kind over the test split.",
        "",
        "| caption kind | examples | image share | caption share |",
        "|---|---|---|---|",
    ]
    for kind, s in shares.items():
        lines.append(f"| {kind} | {s['examples']} | {s['image']:.0%} | {s['caption']:.0%} |")
    if shown:
        right = sum(s["correct"] for s in shown)
        lines += [
            "",
            f"Explained examples ({right} right, {len(shown) - right} wrong): Integrated Gradients on the pixels "
            "(red raised the answer's probability, blue lowered it). `aigc explain` and `POST /v1/explain` "
            "give the same for any image and caption.",
        ]
    return "Explanations", lines, [("explanations.png", grid)] if grid else []


def _robustness(spec: ExperimentSpec, storage: Storage):
    """The ensemble's and its members' accuracy under attack, per ε: a table and the curves."""
    from .ensemble.robustness import ENSEMBLE, read_robustness

    uri = layout.robustness_dir(spec)
    doc = read_robustness(storage, uri)
    if doc is None:
        return None
    lines = [
        f"Accuracy on {doc['examples']} test rows when an attacker may change every pixel by up to ε "
        f"(L∞, pixels in [0, 1]); PGD: {doc['options']['steps']} steps, {doc['options']['restarts']} "
        f"restart(s). With the captions as given a caption that names the class can carry the answer "
        f'alone; with "{doc["vague_caption"]}" only the image can.',
        "",
    ]
    for captions, by_attack in doc["results"].items():
        for attack, by_who in by_attack.items():
            epsilons = list(by_who[ENSEMBLE])
            lines += [
                f"| {attack}, {captions} captions | " + " | ".join(f"ε {e}" for e in epsilons) + " |",
                "|---|" + "---|" * len(epsilons),
            ]
            for who, accs in by_who.items():
                label = f"**{who}**" if who == ENSEMBLE else who
                lines.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in accs.values()) + " |")
            lines.append("")
    return "Adversarial robustness", lines, [("robustness-curves.png", storage.read_bytes(join(uri, "curves.png")))]


def _safety(spec: ExperimentSpec, storage: Storage) -> list[str]:
    """The safety filter's policy and what its audit records say it decided."""
    from collections import Counter

    from .safety.audit import read_audit

    s = spec.safety
    if not s.enabled:
        return ["Off (`safety.enabled: false`): prompts and generated text are served unchecked."]
    lines = [
        f"Action **{s.action}** at threshold {s.threshold:g} on {', '.join(s.categories)}; "
        "a failing filter fails the request (503)."
    ]
    records = read_audit(storage, layout.safety_audit_uri(spec))
    if not records:
        return lines + ["", "No served text checked yet."]
    flagged = [r for r in records if r["flagged"]]
    by_stage = Counter(r["stage"] for r in records)
    lines += [
        "",
        f"{len(records)} texts checked ({by_stage['prompt']} prompts, {by_stage['output']} generations), "
        f"**{len(flagged)} flagged**"
        + (
            " (" + ", ".join(f"{c} {n}" for c, n in Counter(c for r in flagged for c in r["categories"]).items()) + ")"
            if flagged
            else ""
        )
        + f"; policy {', '.join(sorted({r['policy_version'] for r in records}))}. "
        "The audit records hold scores and hashes, never a blocked text.",
    ]
    return lines


def _by_choice(storage: Storage, uri: str, sweep) -> list[str]:
    """For each searched 'choice'/'grid' dimension with several values (e.g. the GAN's generator
    architecture), the best trial per value: the sweep's comparison on its own metric."""
    import csv
    import io
    from collections import Counter

    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(join(uri, "results.csv")).decode())))
    lines = []
    for name, dim in sweep.search_space.items():
        if dim.type not in ("choice", "grid") or len(dim.values or []) < 2 or not rows or name not in rows[0]:
            continue
        best: dict[str, float] = {}
        for row in rows:  # ranked best first: the first row of each value is its best
            best.setdefault(row[name], float(row[sweep.metric]))
        counts = Counter(row[name] for row in rows)
        parts = [f"{v} {s:.4f} ({counts[v]} trial{'s' * (counts[v] > 1)})" for v, s in best.items()]
        lines.append(f"Best {sweep.metric} by {name}: " + ", ".join(parts) + ".")
    return lines


def _stage_table(results) -> list[str]:
    lines = ["| stage | status | time | why |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} s | {r.why} |")
    return lines


def _served(results) -> list[str]:
    answers = next((r.summary.get("answers") for r in results if r.name == "serve" and r.status == "ran"), None)
    if not answers:
        return []
    lines = []
    if "classify" in answers:
        c = answers["classify"]
        lines.append(f"- `/v1/classify` → **{c['label']}** (p = {max(c['probabilities']):.2f}, {c['strategy']})")
    if "images" in answers:
        img = answers["images"]
        asked = f"“{img['prompt']}” → " if img.get("prompt") else ""
        seen = f", read back by the ensemble as {img['read_back']}" if img.get("read_back") else ""
        lines.append(f"- `/v1/images` → {asked}{len(img['data'])} PNGs (seed {img['seed']}){seen}")
    if "videos" in answers:
        clip = answers["videos"]["data"][0]
        lines.append(f"- `/v1/videos` → a {clip['frames']}-frame {clip['width']}×{clip['height']} {clip['media_type']}")
    if "completion" in answers:
        lines.append(f"- `/v1/completions` → “{answers['completion']['choices'][0]['text'].strip()}”")
    if "explain" in answers:
        why = answers["explain"]
        lines.append(
            f"- `/v1/explain` → {why['label_name']}: image {why['modality_shares']['image']:.0%}, "
            f"caption {why['modality_shares']['caption']:.0%} of the decision"
        )
    if "feedback" in answers:
        lines.append(f"- `/v1/feedback` → stored `{answers['feedback']['stored']}`")
    return lines


def write_report(spec: ExperimentSpec, storage: Storage, results) -> str:
    """Write and commit the report for this run; returns the URI of ``report.html``."""
    uri = layout.report_dir(spec)
    head = f"{spec.name} — run report"
    meta = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · code {code_version()} · spec {spec_hash(spec)[:12]}"
    sections = [("Stages", _stage_table(results), [])] + _sections(spec, storage)
    served = _served(results)
    if served:
        sections.append(("Served answers", served, []))
    md = [f"# {head}", "", meta, ""]
    body = [f"<h1>{html.escape(head)}</h1>", f"<p class=meta>{html.escape(meta)}</p>"]
    with tempfile.TemporaryDirectory(prefix="aigc-report-") as tmp:
        out = Path(tmp)
        for title, lines, pngs in sections:
            md += [f"## {title}", "", *lines, ""]
            body += [f"<h2>{html.escape(title)}</h2>", _html_lines(lines)]
            for name, data in pngs:
                (out / name).write_bytes(data)
                md += [f"![{name}]({name})", ""]
                body.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
        (out / "report.md").write_text("\n".join(md))
        (out / "report.html").write_text(_page(head, "\n".join(body)))
        publish_directory(storage, out, uri, kind="report", spec_hash=spec_hash(spec), inputs={})
    return join(uri, "report.html")


def _html_lines(lines: list[str]) -> str:
    """The little Markdown these sections use (tables, bullets, quotes, bold) as HTML."""
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    parts, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                table.append(cells)
            continue
        if table:
            head, *rows = table
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{inline(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
            table = []
        if line.startswith("- "):
            parts.append(f"<li>{inline(line[2:])}</li>")
        elif line.startswith("> "):
            parts.append(f"<blockquote>{inline(line[2:])}</blockquote>")
        elif line:
            parts.append(f"<p>{inline(line)}</p>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "img{max-width:48%;margin:4px;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}.meta{color:#777}blockquote{color:#555;margin:.2em 1em}"
    )
    return f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n"
