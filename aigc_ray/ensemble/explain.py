"""Explanations of the committed ensemble's answers: what ``POST /v1/explain``, ``aigc explain``
and the run report show.

Each member is explained by ``models.explain`` (Integrated Gradients on pixels and caption
tokens, exact two-player Shapley values over {image, caption}) at the class the *ensemble*
answers. The ensemble itself:

- modality shares: the exact two-player Shapley values of the ensemble's log-probability of that
  class (4 inputs: as given, black image, baseline caption, both), any combination strategy;
- pixel and token attributions: for the linear strategies (mean, weighted) the members'
  attributions summed with the ensemble's weights, which is exactly IG of the ensemble's
  probability (IG is linear in the function; its convergence delta sums the same way). For vote
  and stacking, which are not a weighted sum of the members, the highest-weight member's, and
  the answer says whose (``attribution_of``).

The baseline caption names nothing: the data's own vague caption ("a handwritten digit" for the
digits, "a picture" for other classes), which the models saw in training.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import torch

from ..data.captions import caption_tokens, encode_captions
from ..data.digits import baseline_caption
from ..data.images import encode_png
from ..models.explain import explain
from ..storage import Storage
from .build import LoadedEnsemble, load_ensemble

METHOD = {
    "attribution": "integrated_gradients",
    "library": "captum",
    "modality": "shapley_two_player_exact",
    "modality_value": "log-probability of the explained class",
}
MIN_STEPS, MAX_STEPS = 8, 1024


def resolve_target(classes: list[str], target: int | str | None) -> int | None:
    """The class to explain as an index: a name of ``classes``, an index (or its digits, as a
    command line gives it), or None for the ensemble's answer; ValueError naming the classes."""
    if target is None:
        return None
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    index = int(target) if isinstance(target, int) or target.isdigit() else -1
    if not 0 <= index < len(classes):
        raise ValueError(
            f"unknown class {target!r}: not a class name or an index in 0..{len(classes) - 1}; the classes are {classes}"
        )
    return index


@dataclass
class LoadedExplainer(LoadedEnsemble):
    """The committed ensemble, and the storage its tokenizers are read from."""

    storage: Storage | None = None


def load_explainer(storage: Storage, ensemble_uri: str) -> LoadedExplainer:
    return LoadedExplainer(**vars(load_ensemble(storage, ensemble_uri)), storage=storage)


def _encode(ex: LoadedExplainer, i: int, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    c = ex.configs[i]
    ids, mask, _ = encode_captions(texts, c["tokenizer"], ex.storage, int(c["max_text_tokens"]))
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _aligned(ex: LoadedExplainer, i: int, text: str, baseline: str):
    """The caption and the baseline caption encoded to one width (Shapley swaps one for the other)."""
    ids, mask = _encode(ex, i, [text, baseline])
    return ids[:1], mask[:1], (ids[1:], mask[1:])


@torch.no_grad()
def _ensemble_probs(ex: LoadedExplainer, image: torch.Tensor, captions: list[tuple]) -> np.ndarray:
    """(C,) ensemble probabilities for one image with member i reading ``captions[i]`` (ids, mask)."""
    probs = [torch.softmax(m(image, *captions[i]), -1).numpy() for i, m in enumerate(ex.models)]
    return ex.combiner(np.stack(probs))[0]


def _ensemble_shapley(ex: LoadedExplainer, x, given: list, base: list, target: int) -> tuple[float, float, dict]:
    """The two players' exact Shapley values on the ensemble's log-probability of ``target``:
    the image against a black one, the caption against the baseline caption."""
    blank = torch.zeros_like(x)
    p = {
        "both": _ensemble_probs(ex, x, given),
        "image": _ensemble_probs(ex, x, base),
        "caption": _ensemble_probs(ex, blank, given),
        "none": _ensemble_probs(ex, blank, base),
    }
    v = {k: float(np.log(max(q[target], 1e-12))) for k, q in p.items()}
    phi_image = 0.5 * ((v["image"] - v["none"]) + (v["both"] - v["caption"]))
    phi_caption = 0.5 * ((v["caption"] - v["none"]) + (v["both"] - v["image"]))
    return phi_image, phi_caption, v


def modality_shares(ex: LoadedExplainer, image: np.ndarray, text: str) -> tuple[int, float]:
    """(the ensemble's answer, the image's share of it): the Shapley values alone, no gradients."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
    encoded = [_aligned(ex, i, text, baseline_caption(ex.classes)) for i in range(len(ex.models))]
    given, base = [(ids, mask) for ids, mask, _ in encoded], [b for _, _, b in encoded]
    answer = int(_ensemble_probs(ex, x, given).argmax())
    phi_image, phi_caption, _ = _ensemble_shapley(ex, x, given, base, answer)
    total = abs(phi_image) + abs(phi_caption)
    return answer, abs(phi_image) / total if total > 0 else 0.5


def explain_example(
    ex: LoadedExplainer, image: np.ndarray, text: str, target: int | str | None = None, steps: int = 256
) -> dict:
    """The explanation of the ensemble's answer for one (image (C, H, W) in [0, 1], caption)."""
    if not MIN_STEPS <= int(steps) <= MAX_STEPS:
        raise ValueError(f"steps must be between {MIN_STEPS} and {MAX_STEPS}, got {steps}")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
    if x.shape[1:] != ex.image_shape:
        raise ValueError(f"image must be {ex.image_shape} (channels, height, width), got {tuple(x.shape[1:])}")
    baseline = baseline_caption(ex.classes)
    encoded = [_aligned(ex, i, text, baseline) for i in range(len(ex.models))]
    given = [(ids, mask) for ids, mask, _ in encoded]
    base = [b for _, _, b in encoded]
    probs = _ensemble_probs(ex, x, given)
    target = resolve_target(ex.classes, target)
    target = int(probs.argmax()) if target is None else target

    phi_image, phi_caption, v = _ensemble_shapley(ex, x, given, base, target)
    total = abs(phi_image) + abs(phi_caption)
    image_share = abs(phi_image) / total if total > 0 else 0.5

    members, explained = {}, []
    for i, (name, model) in enumerate(zip(ex.names, ex.models, strict=True)):
        ids, mask, base_caption = encoded[i]
        e = explain(model, x, ids, mask, target, steps=int(steps), baseline_caption=base_caption)
        explained.append(e)
        members[name] = {
            "probability": round(e.probability, 6),
            "modality_shares": {"image": round(e.image_share, 6), "caption": round(e.caption_share, 6)},
            "shapley": {"image": e.image_shapley, "caption": e.caption_shapley},
            "delta": {"image": e.image_delta, "tokens": e.token_delta},
            "tokens": _tokens(ex, i, ids, mask, e.token_attribution),
        }
    weights = np.asarray(ex.combiner.weights, dtype=np.float64)
    linear = ex.combiner.strategy in ("mean", "weighted")
    top = int(weights.argmax())
    if linear:
        pixels = sum(w * e.image_attribution for w, e in zip(weights, explained, strict=True))
        delta_image = float(sum(w * e.image_delta for w, e in zip(weights, explained, strict=True)))
        shared = (
            len({c["tokenizer"] for c in ex.configs}) == 1 and len({len(e.token_attribution) for e in explained}) == 1
        )
        if shared:
            token_values = sum(w * e.token_attribution for w, e in zip(weights, explained, strict=True))
            tokens = _tokens(ex, 0, encoded[0][0], encoded[0][1], token_values)
            delta_tokens = float(sum(w * e.token_delta for w, e in zip(weights, explained, strict=True)))
        else:
            tokens, delta_tokens = members[ex.names[top]]["tokens"], explained[top].token_delta
        attribution_of = {"image": "ensemble", "tokens": "ensemble" if shared else ex.names[top]}
    else:
        pixels, delta_image = explained[top].image_attribution, explained[top].image_delta
        tokens, delta_tokens = members[ex.names[top]]["tokens"], explained[top].token_delta
        attribution_of = {"image": ex.names[top], "tokens": ex.names[top]}
    attention = explained[top].attention
    return {
        "object": "explanation",
        "label": int(probs.argmax()),
        "label_name": ex.classes[int(probs.argmax())],
        "target": target,
        "target_name": ex.classes[target],
        "probability": round(float(probs[target]), 6),
        "strategy": ex.combiner.strategy,
        "method": METHOD | {"steps": int(steps)},
        "baseline": {"image": "black (all zeros)", "caption": baseline, "tokens": "padding in every position"},
        "modality_shares": {"image": round(image_share, 6), "caption": round(1.0 - image_share, 6)},
        "shapley": {"image": phi_image, "caption": phi_caption, "values": v},
        "attribution_of": attribution_of,
        "delta": {"image": delta_image, "tokens": delta_tokens},
        "image_attribution": np.round(np.asarray(pixels, dtype=np.float64), 8).tolist(),
        "tokens": tokens,
        "attention": None if attention is None else np.round(attention, 6).tolist(),
        "attention_of": None if attention is None else ex.names[top],
        "members": members,
        "overlay_png": base64.b64encode(overlay_png(image, np.asarray(pixels))).decode(),
    }


def _tokens(ex: LoadedExplainer, i: int, ids, mask, values) -> list[dict]:
    words = caption_tokens(ids[0].tolist(), ex.configs[i]["tokenizer"], ex.storage)
    return [
        {"token": w, "attribution": round(float(a), 8)}
        for w, a, m in zip(words, np.asarray(values), mask[0].tolist(), strict=True)
        if m
    ]


def overlay_png(image: np.ndarray, attribution: np.ndarray, scale: int = 16) -> bytes:
    """The image in grey with the attribution over it: red where a pixel raised the answer's
    probability, blue where it lowered it, the strongest at full colour (each pixel a ``scale``
    square block, so an 8x8 digit is legible)."""
    img = np.asarray(image, dtype=np.float64)
    grey = img.mean(0)
    attr = np.asarray(attribution, dtype=np.float64).sum(0)
    peak = np.abs(attr).max()
    a = attr / peak if peak > 0 else attr
    rgb = np.repeat((0.35 + 0.4 * grey)[:, :, None], 3, axis=2)
    red, blue = np.clip(a, 0, 1)[:, :, None], np.clip(-a, 0, 1)[:, :, None]
    rgb = rgb * (1 - red - blue) + red * np.array([1.0, 0.1, 0.1]) + blue * np.array([0.1, 0.3, 1.0])
    return encode_png(np.clip(rgb, 0, 1), scale)


def explained_test_examples(
    ex: LoadedExplainer, arrays: dict, kinds: list[str], per_kind: int = 30, tiles: int = 8, steps: int = 64
) -> tuple[dict, list[dict], bytes | None]:
    """What the run report shows of the test split (``arrays`` as ``data.arrays.shard_arrays``;
    ``kinds``: each row's caption kind, exact | vague | wrong):

    - the ensemble's average image share per caption kind, over the first ``per_kind`` rows of each;
    - a grid of explained examples: the first rows that are correct and wrong, with exact and vague
      captions (up to ``tiles``; wrong answers may be too rare to show), and each one's numbers."""
    kinds = [str(k) for k in kinds]
    shares: dict[str, dict] = {}
    answers: dict[int, int] = {}
    for kind in ("exact", "vague", "wrong"):
        rows = [i for i, k in enumerate(kinds) if k == kind][:per_kind]
        if not rows:
            continue
        got = []
        for i in rows:
            answers[i], share = modality_shares(ex, arrays["image"][i], str(arrays["text"][i]))
            got.append(share)
        shares[kind] = {"image": float(np.mean(got)), "caption": 1.0 - float(np.mean(got)), "examples": len(rows)}
    wanted = [(kind, ok) for kind in ("exact", "vague") for ok in (True, False)]
    picked: list[int] = []
    for kind, ok in wanted:
        matching = [i for i, a in answers.items() if kinds[i] == kind and (a == int(arrays["label"][i])) == ok]
        picked += matching[: max(1, tiles // len(wanted))]
    shown = []
    for i in picked[:tiles]:
        doc = explain_example(ex, arrays["image"][i], str(arrays["text"][i]), steps=steps)
        shown.append(
            {
                "row": i,
                "caption": str(arrays["text"][i]),
                "caption_kind": kinds[i],
                "label": ex.classes[int(arrays["label"][i])],
                "answer": doc["label_name"],
                "correct": doc["label"] == int(arrays["label"][i]),
                "image_share": doc["modality_shares"]["image"],
                "overlay_png": doc["overlay_png"],
            }
        )
    return shares, shown, grid_png(shown) if shown else None


def grid_png(shown: list[dict], columns: int = 4) -> bytes:
    """The explained examples side by side: each overlay over three lines (caption and kind;
    true label -> answer; the image's share)."""
    import io

    from PIL import Image, ImageDraw

    tiles = [Image.open(io.BytesIO(base64.b64decode(s["overlay_png"]))).convert("RGB") for s in shown]
    side = max(t.width for t in tiles)
    cell_w, cell_h = max(side, 180), side + 48
    rows = -(-len(tiles) // columns)
    out = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), "white")
    draw = ImageDraw.Draw(out)
    for n, (tile, s) in enumerate(zip(tiles, shown, strict=True)):
        x, y = (n % columns) * cell_w, (n // columns) * cell_h
        out.paste(tile.resize((side, side), Image.Resampling.NEAREST), (x + (cell_w - side) // 2, y))
        mark = "ok" if s["correct"] else "WRONG"
        lines = [
            f"'{s['caption'][:26]}' ({s['caption_kind']})",
            f"{s['label']} -> {s['answer']} [{mark}]",
            f"image {s['image_share']:.0%} / caption {1 - s['image_share']:.0%}",
        ]
        for k, line in enumerate(lines):
            draw.text((x + 4, y + side + 2 + 15 * k), line, fill="black" if s["correct"] else (180, 0, 0))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
