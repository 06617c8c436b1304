"""Fine-tuning modes applied to a loaded model: full, frozen lower layers, or LoRA (peft). Works
on our GPT-2 and BERT exports, the packaged MiniLM, and a user's own Hugging Face model."""

from __future__ import annotations

import torch

from ..spec.training import local_architectures, saved_dtype

LORA_TARGETS = {"gpt2": ["c_attn", "c_proj"], "bert": ["query", "value"]}


def transformer_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks (any task head): GPT-2's ``h``, BERT's ``encoder.layer``,
    or the first block list named like one (``layers``, ``layer``, ``blocks``) of another model."""
    base = model.base_model
    if hasattr(base, "h"):  # GPT-2
        return base.h
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT
        return base.encoder.layer
    for name, module in base.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module)
            and name.split(".")[-1] in ("layers", "layer", "blocks")
        ):
            return module
    raise ValueError(f"don't know where the layers of a {type(model).__name__} are")


def embeddings(model) -> list[torch.nn.Module]:
    """The embedding modules ``freeze`` fixes: GPT-2's token and position tables (GPT-J's and
    CodeGen's ``wte`` alone: rotary positions), BERT's (and DistilBERT's, RoBERTa's) embeddings
    block, else the model's input embeddings (a Llama's ``embed_tokens``; rotary again)."""
    base = model.base_model
    if hasattr(base, "wte"):
        return [base.wte, *([base.wpe] if hasattr(base, "wpe") else [])]
    if isinstance(getattr(base, "embeddings", None), torch.nn.Module):
        return [base.embeddings]
    return [model.get_input_embeddings()]


def freeze_lower(model, n_layers: int) -> list[str]:
    """Freeze the embeddings and the lower ``n_layers`` blocks; returns the frozen parameter names."""
    layers = transformer_layers(model)
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers={n_layers} but the model has only {len(layers)} layers")
    frozen_modules = [*embeddings(model), *layers[:n_layers]]
    frozen_ids = {id(p) for m in frozen_modules for p in m.parameters()}
    names = []
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            param.requires_grad_(False)
            names.append(name)
    return names


def backbone_linears(model) -> list[str]:
    """Every linear layer of the model's backbone, by full name — not its task head: a sequence
    classifier's head trains whole (peft's modules_to_save), and an adapter inside it clashes
    with that (DistilBERT's ``pre_classifier``, which peft's "all-linear" would adapt)."""
    body = {id(m) for m in model.base_model.modules()}
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in body]


def add_lora(model, task: str, r: int, alpha: int, dropout: float):
    """Wrap ``model`` with LoRA adapters on the attention projections; only adapters (and a
    classification head) train."""
    from peft import LoraConfig, TaskType, get_peft_model

    family = model.config.model_type
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # our two families by name; any other model: every linear layer of its backbone
        target_modules=LORA_TARGETS.get(family) or backbone_linears(model),
        fan_in_fan_out=family == "gpt2",  # GPT-2's projections are Conv1D (transposed weights)
        task_type=TaskType.CAUSAL_LM if task == "caption" else TaskType.SEQ_CLS,
    )
    return get_peft_model(model, config)


def load_base(path: str, task: str, classes: list[str] | None = None):
    """A Hugging Face model from a local folder: causal LM for captioning, a sequence classifier
    (new head, seeded by the caller) for classification, its own LM for continued pretraining. A model without a pad token (GPT-2)
    pads with its end-of-text token.

    Always in float32, whatever the base was saved in: transformers 5 loads a bf16 Llama or Qwen
    as bf16, and training those weights directly would drop every update smaller than bf16's
    step (8 bits of mantissa); DeepSpeed casts to bf16 itself under ``precision: bf16`` and
    keeps float32 master weights. The export goes back to the base's dtype (``in_saved_dtype``)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if task == "caption" or (task == "pretrain" and is_causal_lm(path)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif task == "pretrain":  # continued pretraining of an encoder: its masked-LM head
        model = AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = load_classifier(path, list(classes or [str(k) for k in range(10)]))
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def load_classifier(path: str, classes: list[str]):
    """A sequence classifier over ``classes`` from any encoder folder: a bare encoder gets a new
    head; so does a classifier trained for other labels (a sentiment model's two, say: loading
    it as it is would fail on the head's size, or keep a head that means something else). Only a
    head for exactly these class names, in this order (our own earlier export, fine-tuned again
    on new feedback), is kept. The config names the classes, so ``pipeline()`` on the export
    answers "circle", not "LABEL_3"."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    names = dict(enumerate(classes))
    config = AutoConfig.from_pretrained(path)
    own_head = config.num_labels == len(classes) and {int(k): v for k, v in config.id2label.items()} == names
    had_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(classes),
        id2label=names,
        label2id={v: k for k, v in names.items()},
        ignore_mismatched_sizes=True,  # another task's head: replaced below anyway
        dtype=torch.float32,
    )
    if had_head and not own_head:  # (a bare encoder's head is new already)
        fresh_head(model)
    return model


def fresh_head(model) -> None:
    """Everything of a classifier outside its encoder (DistilBERT's pre_classifier and
    classifier, RoBERTa's dense and out_proj, Llama's score) initialised afresh as transformers
    initialises a new head: normal(0, initializer_range) weights, zero biases, unit norms. Done
    here because transformers' own init skips weights it loaded."""
    std = getattr(model.config, "initializer_range", None) or 0.02
    with torch.no_grad():
        for name, child in model.named_children():
            if name == model.base_model_prefix:
                continue
            for module in child.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()


def in_saved_dtype(model, config: dict):
    """``model`` cast to the dtype its base (``config``: the base's config.json) was saved in:
    a bf16 base comes back as bf16, the size the user brought, not twice it in float32."""
    return model.to(getattr(torch, saved_dtype(config)))


# Weights in formats transformers does not load when safetensors are there: a Hub snapshot often
# holds the same model three or four times over (PyTorch, TensorFlow, Flax, ONNX, GGUF).
OTHER_WEIGHTS = (".bin", ".h5", ".msgpack", ".onnx", ".pth", ".pt", ".gguf", ".ot", ".tflite", ".ckpt")


def model_files(names: list[str]) -> set[str]:
    """Which files of a Hugging Face model folder (relative paths) loading it reads: the top
    level only (``original/`` holds Meta's own multi-GB checkpoint, ``onnx/`` an export) and,
    when it has safetensors, no weights in other formats; every top-level file otherwise (an
    older folder with only ``pytorch_model.bin``)."""
    top = [n for n in names if "/" not in n]
    if not any(n.endswith(".safetensors") for n in top):
        return set(top)
    return {n for n in top if not (n.endswith(OTHER_WEIGHTS) or ".ckpt." in n)}


def is_causal_lm(path: str) -> bool:
    """Whether a Hugging Face model folder holds a causal (generating) language model."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in local_architectures(path) or [])


def prepare(path: str, task: str, tuning: dict):
    """Load the base and apply the tuning mode (``tuning``: mode, freeze_layers, lora_*)."""
    model = load_base(path, task, tuning.get("classes"))
    if tuning["mode"] == "freeze":
        freeze_lower(model, tuning["freeze_layers"])
    elif tuning["mode"] == "lora":
        model = add_lora(model, task, tuning["lora_r"], tuning["lora_alpha"], tuning["lora_dropout"])
    return model
