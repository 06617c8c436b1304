"""Base models and tokenizers of other families than ours, built offline from configs, as a
user's Hugging Face folder would hold them."""

from __future__ import annotations

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEXTS = [f"Caption for a {w}: a handwritten {w}, the digit {i}" for i, w in enumerate(WORDS)] * 20


def llama_style_tokenizer():
    """A SentencePiece-like BPE whose post-processor puts ``<s>`` before every text (as Llama's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama_folder(folder, seed: int = 0):
    """A tiny Llama (grouped-query attention, untied head, rotary positions) with the tokenizer
    above, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llama_style_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


EOT = "<|eot|>"
CHAT_TEMPLATE = (  # Llama-3-like: the template writes the start token itself, each turn ends with <|eot|>
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def instruct_llama_folder(folder):
    """A Llama 'instruct' export: its chat template writes ``<s>`` itself, and its generation
    config ends a turn with ``<|eot|>`` as well as ``</s>`` (as Llama 3's and Qwen's do). The
    weights are set so that greedy decoding writes ``<|eot|>`` at once: every layer adds nothing
    to the residual stream, one embedding dimension is always positive, and only the head's row
    of ``<|eot|>`` reads it."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    llama_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [EOT]})
    tokenizer.chat_template = CHAT_TEMPLATE
    model = LlamaForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    eot = tokenizer.convert_tokens_to_ids(EOT)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 5.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[eot, 0] = 10.0
    model.config.vocab_size = len(tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, eot]
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer
