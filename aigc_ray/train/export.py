"""From a reported training checkpoint to a plain Hugging Face folder (safetensors), and the
things a person looks at beside it: evaluation, generated samples, loss curve, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..tracking import tensorboard_scalars
from .loop import CKPT_TAG, HF_CONFIG_FILE, STATE_FILE

SAMPLE_PROMPTS = 3  # generations shown per export
PROMPT_WORDS = 3  # each prompt: the first words of a held-out document


def sample_prompts(documents: list[str], n: int = SAMPLE_PROMPTS, words: int = PROMPT_WORDS) -> list[str]:
    """The first ``words`` words of ``n`` documents spread evenly over ``documents`` (the corpus's
    held-out split): prompts in the language and register of whatever corpus was trained on,
    the same ones for the same corpus. Empty when no document has a word."""
    texts = [" ".join(d.split()[:words]) for d in documents if d and d.split()]
    if len(texts) <= n:
        return texts
    return [texts[round(i * (len(texts) - 1) / (n - 1))] for i in range(n)] if n > 1 else texts[:1]


def consolidated_state_dict(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """fp32 weights gathered from every rank's ZeRO shards (stages 1-3), or the module state of
    a stage-0 checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = Path(ckpt_dir, CKPT_TAG)
    if any(tag_dir.glob("*optim_states.pt")) and any(tag_dir.glob("*zero_pp_rank_*")):
        return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=CKPT_TAG)
    # Stage 0: the module weights are whole in the model-states file (our own file: trusted).
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def load_export_model(ckpt_dir: str):
    """A plain ``transformers`` model holding the checkpoint's consolidated weights."""
    from transformers import AutoConfig

    from ..models.lm import build_lm

    config = AutoConfig.for_model(**json.loads(Path(ckpt_dir, HF_CONFIG_FILE).read_text()))
    model = build_lm(config)
    missing, unexpected = model.load_state_dict(consolidated_state_dict(ckpt_dir), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    really_missing = [k for k in missing if k not in tied and "lm_head" not in k and "decoder.weight" not in k]
    if really_missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {really_missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def plain_eval_loss(model, blocks, loop_cfg) -> float:
    """Mean loss of a plain model on the held-out micro-batches the engine evaluated."""
    from .loop import batch_for, eval_chunks, num_samples

    micro = loop_cfg.training.micro_batch_size
    chunks = eval_chunks(num_samples(blocks), micro, loop_cfg.training.eval_batches)
    losses = []
    with torch.no_grad():
        for c in range(chunks):
            rows = np.arange(c * micro, (c + 1) * micro)
            losses.append(float(model(**batch_for(blocks, rows, loop_cfg, step=-1, chunk=c, device="cpu")).loss))
    return sum(losses) / max(len(losses), 1)


def samples(model, tokenizer, objective: str, prompts: list[str]) -> list[str]:
    """A generation (CLM, sampled with a fixed seed) or a fill-mask prediction of the word after it
    (MLM) per prompt, for a person to read."""
    out = []
    for prompt in prompts:
        if objective == "clm":
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            torch.manual_seed(0)  # sampled, but the same text for the same weights
            gen = model.generate(
                ids, max_new_tokens=24, do_sample=True, top_k=40, temperature=0.8, pad_token_id=tokenizer.pad_token_id
            )
            out.append(tokenizer.decode(gen[0], skip_special_tokens=True))
        else:
            text = f"{prompt} {tokenizer.mask_token}"
            enc = tokenizer(text, return_tensors="pt")
            logits = model(**enc).logits[0]
            pos = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
            out.append(text.replace(tokenizer.mask_token, f"[{tokenizer.decode(logits[pos].argmax())}]"))
    return out


def loss_curve_png(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    evals = [h for h in history if "eval_loss" in h]
    if evals:
        ax.scatter(
            [h["step"] for h in evals], [h["eval_loss"] for h in evals], color="C3", label="held-out loss", zorder=3
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tensorboard_events(history: list[dict], log_dir: Path) -> None:
    keys = ("loss", "lr", "tokens_per_s", "eval_loss", "eval_perplexity", "eval_masked_accuracy")
    tensorboard_scalars(log_dir, [(f"pretrain/{k}", h[k], h["step"]) for h in history for k in keys if k in h])


def read_state(ckpt_dir: str) -> dict:
    return json.loads(Path(ckpt_dir, STATE_FILE).read_text())


def write_run_artifacts(out: Path, history: list[dict], title: str, evaluation: dict, texts: list[str]) -> None:
    """What a person looks at beside an export: eval.json, samples.txt, history.jsonl, loss.png
    and TensorBoard events."""
    (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
    (out / "samples.txt").write_text("\n".join(texts) + "\n")
    (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    loss_curve_png(history, out / "loss.png", title)
    tensorboard_events(history, out / "tensorboard")
