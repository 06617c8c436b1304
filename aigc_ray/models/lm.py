"""Causal (GPT-2 family) and masked (BERT family) language models built from the spec.

No hub downloads: a model is a ``transformers`` config plus fresh weights; the vocabulary
comes from our own tokenizer. The same function builds a 2-layer model for a laptop and a
GPT-2-XL-size model for a GPU cluster.
"""

from __future__ import annotations

from typing import Any

from ..spec.sections import PretrainSpec


def lm_config(p: PretrainSpec, vocab_size: int, special_ids: dict[str, int]):
    """The ``transformers`` config for the spec's model (GPT2Config or BertConfig)."""
    from transformers import BertConfig, GPT2Config

    n_layer, n_head, n_embd = p.model.dims
    drop = p.model.dropout
    if p.model_family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=p.seq_len,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            bos_token_id=special_ids["bos"],
            eos_token_id=special_ids["eos"],
            pad_token_id=special_ids["pad"],
            tie_word_embeddings=True,
            # GPT-2's tanh-approximated GELU as one fused kernel instead of HF's "gelu_new" (eight
            # elementwise ones): the same function, 21 % more tokens/s and 23 % less peak
            # memory for GPT-2-XL on an H200 (bench/gpu_mfu.py, BENCHMARKS.md).
            activation_function="gelu_pytorch_tanh",
            **({} if drop is None else {"embd_pdrop": drop, "attn_pdrop": drop, "resid_pdrop": drop}),
        )
    return BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=p.seq_len,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        hidden_size=n_embd,
        intermediate_size=4 * n_embd,
        pad_token_id=special_ids["pad"],
        type_vocab_size=1,
        **({} if drop is None else {"hidden_dropout_prob": drop, "attention_probs_dropout_prob": drop}),
    )


def build_lm(config: Any):
    """A freshly initialised model for ``config``: causal LM for GPT-2, masked LM for BERT.

    Under ZeRO-3 call this while an ``HfDeepSpeedConfig`` is alive, so the weights are
    partitioned at construction and still get Hugging Face's initialisation.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    architectures = getattr(config, "architectures", None) or []
    if architectures:  # a continued model's own head (pretrain.init): causal or masked
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        causal = config.model_type == "gpt2"
    return (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_config(config)


def count_params(model) -> int:
    """Parameters of ``model`` (ZeRO-3 aware: partitioned tensors report their full size)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·H·Q·T for attention (= 12·L·d·T),
    the formula used for MFU (PaLM appendix B; nanoGPT's estimate_mfu)."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len
