"""Why the fusion classifier answered as it did: Integrated Gradients on the image's pixels and on
the caption's token embeddings (Captum), the modality shares as the exact two-player Shapley
value over {image, caption} (MM-SHAP's sense), and, for the cross-attention operator, how much
each caption token attended to each image patch.

Everything explains one output: the probability of the ``target`` class (by default the class
the model answers). The baselines are what "absent" means: a blank (black) image for the image;
for the caption, in the Shapley values, a caption that names nothing and that the model has seen
(the data's vague caption, e.g. "a handwritten digit": a model whose caption tokens query the
image, like cross-attention, reads nothing sensible through a caption of padding), and for IG on
the tokens, padding in each position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fusion import FusionClassifier


@dataclass
class Explanation:
    target: int  # the class explained
    probability: float  # the model's probability of ``target`` for the input
    image_attribution: np.ndarray  # (C, H, W): IG on the pixels, caption held as given
    token_attribution: np.ndarray  # (T,): IG on the token embeddings, summed over the width, image as given
    image_delta: float  # IG's convergence delta: sum of attributions minus (f(x) - f(baseline))
    token_delta: float
    image_shapley: float  # the players' Shapley values on the target's logit: they sum to its change from the baselines
    caption_shapley: float
    image_share: float  # |phi_image| / (|phi_image| + |phi_caption|)
    caption_share: float
    attention: np.ndarray | None  # (T, P): caption token -> image patch, cross-attention models only
    steps: int  # IG's integration steps


def _probability(model: FusionClassifier, target: int):
    """The target's probability; an input of batch 1 is repeated to the others' batch (IG sends
    its interpolation steps as one batch of the input it integrates over)."""

    def f(image, ids, mask):
        n = max(len(image), len(ids))
        image, ids, mask = (t.expand(n, *t.shape[1:]) if len(t) == 1 else t for t in (image, ids, mask))
        return torch.softmax(model(image, ids, mask), dim=-1)[:, target]

    return f


def padding_caption(ids: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The uninformative caption: the same length, padding only, one position attended (a caption
    of no tokens has no mean to take)."""
    base = torch.full_like(ids, pad_id)
    mask = torch.zeros_like(ids)
    mask[:, 0] = 1
    return base, mask


@torch.no_grad()
def modality_shapley(
    model: FusionClassifier, image, ids, mask, target: int, baseline_caption=None, pad_id: int = 0
) -> tuple[float, float, dict[str, float]]:
    """The exact Shapley values of the two players, image and caption, from 4 forward passes:
    v(S) is the target's logit with the players outside S at their baselines (a black image;
    ``baseline_caption`` (ids, mask), default padding). The logit, as MM-SHAP takes the model's
    raw score: a probability saturates (a model 94 % sure of "2" for a black image leaves an image
    of a 2 almost nothing to add, however much it was read)."""
    blank = torch.zeros_like(image)
    base_ids, base_mask = baseline_caption if baseline_caption is not None else padding_caption(ids, pad_id)

    def f(image, ids, mask):
        return model(image, ids, mask)[:, target]

    v = {
        "both": float(f(image, ids, mask)),
        "image": float(f(image, base_ids, base_mask)),
        "caption": float(f(blank, ids, mask)),
        "none": float(f(blank, base_ids, base_mask)),
    }
    phi_image = 0.5 * ((v["image"] - v["none"]) + (v["both"] - v["caption"]))
    phi_caption = 0.5 * ((v["caption"] - v["none"]) + (v["both"] - v["image"]))
    return phi_image, phi_caption, v


def _token_embedding(model: FusionClassifier) -> torch.nn.Module:
    text = model.text
    return text.embed if hasattr(text, "embed") else text.bert.embeddings.word_embeddings


@torch.no_grad()
def cross_attention(model: FusionClassifier, image, ids, mask) -> np.ndarray | None:
    """(T, P): the attention weights from each caption token to each image patch (averaged over
    heads), for the cross-attention operator; None for the others."""
    if model.fusion.operator != "cross_attention":
        return None
    image_tokens, _ = model.image(image)
    text_tokens, _ = model.text(ids, mask)
    _, weights = model.fusion.attn(text_tokens, image_tokens, image_tokens, need_weights=True)
    return weights[0].numpy()


def explain(
    model: FusionClassifier,
    image: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    target: int | None = None,
    steps: int = 256,  # IG converges slowly through ReLU and max pooling: 64 left 1 % on digits
    pad_id: int = 0,
    baseline_caption: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Explanation:
    """Explain one example (a batch of one: image (1, C, H, W), ids and mask (1, T)).
    ``baseline_caption``: (ids, mask) of the caption that names nothing, for the Shapley values."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    model = model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(image, ids, mask), dim=-1)[0]
    target = int(probs.argmax()) if target is None else int(target)
    f = _probability(model, target)

    image_ig = IntegratedGradients(lambda x: f(x, ids, mask))
    image_attr, image_delta = image_ig.attribute(
        image, baselines=torch.zeros_like(image), n_steps=steps, return_convergence_delta=True
    )
    base_ids, _ = padding_caption(ids, pad_id)
    token_ig = LayerIntegratedGradients(lambda i: f(image, i, mask), _token_embedding(model))
    token_attr, token_delta = token_ig.attribute(ids, baselines=base_ids, n_steps=steps, return_convergence_delta=True)
    phi_image, phi_caption, _ = modality_shapley(model, image, ids, mask, target, baseline_caption, pad_id)
    total = abs(phi_image) + abs(phi_caption)
    image_share = abs(phi_image) / total if total > 0 else 0.5
    return Explanation(
        target=target,
        probability=float(probs[target]),
        image_attribution=image_attr[0].detach().numpy(),
        token_attribution=token_attr[0].sum(-1).detach().numpy() * mask[0].numpy(),
        image_delta=float(image_delta[0]),
        token_delta=float(token_delta[0]),
        image_shapley=phi_image,
        caption_shapley=phi_caption,
        image_share=image_share,
        caption_share=1.0 - image_share,
        attention=cross_attention(model, image, ids, mask),
        steps=steps,
    )
