"""A user's base model of another family than ours, through each fine-tuning mode (no Ray: the
quick subset; ``test_finetune`` trains a Llama end to end on Ray Train)."""

from __future__ import annotations

import pytest
import torch
from base_models import llama_folder

from aigc_ray.models.tuning import prepare
from aigc_ray.train.finetune import base_tokenizer, classify_examples

ROWS = [{"text": "a handwritten seven", "label": 7}, {"text": "a picture", "label": 2}]


def encoder_folder(folder, family: str) -> str:
    """A tiny masked-LM encoder of ``family`` with the MiniLM's real WordPiece tokenizer."""
    from transformers import (
        AutoTokenizer,
        DistilBertConfig,
        DistilBertForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    from aigc_ray.data.tokenizer import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    if family == "distilbert":  # its head has a Linear of its own (pre_classifier) before the classifier
        model = DistilBertForMaskedLM(
            DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
        )
    else:
        model = RobertaForMaskedLM(
            RobertaConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


TUNING = {"freeze_layers": 1, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "classes": [str(k) for k in range(10)]}


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
@pytest.mark.parametrize("mode", ["full", "freeze", "lora"])
def test_other_encoders_classify_in_every_mode_and_lora_merges_to_a_plain_model(tmp_path, family, mode):
    folder = encoder_folder(tmp_path / family, family)
    batch = {k: torch.from_numpy(v) for k, v in classify_examples(ROWS, base_tokenizer(folder), 16).items()}
    model = prepare(folder, "classify", {**TUNING, "mode": mode})
    model(**batch).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    head = [n for n in trained if "classifier" in n]
    assert head and all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in head)
    if mode == "lora":
        adapted = {n.split(".lora_A")[0] for n in trained if ".lora_A" in n}
        assert adapted and not any("classifier" in n for n in adapted)  # adapters in the backbone only
        body = [n for n in trained if "lora_" not in n and "classifier" not in n]
        assert body == []  # the backbone's own weights stay as they were
        merged = model.merge_and_unload()
        assert not any("lora_" in k for k in merged.state_dict())
        assert type(merged).__name__.endswith("ForSequenceClassification")
    elif mode == "freeze":
        assert not any(".0." in n for n in trained)  # the lower layer stays fixed


def gptj_folder(folder) -> None:
    """A tiny GPT-J: GPT-2's ``wte`` but rotary positions, so no ``wpe``."""
    from base_models import llama_style_tokenizer
    from transformers import GPTJConfig, GPTJForCausalLM

    tokenizer = llama_style_tokenizer()
    torch.manual_seed(0)
    config = GPTJConfig(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, rotary_dim=8)
    GPTJForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("task", ["caption", "classify"])
@pytest.mark.parametrize(
    ("family", "embedding", "lower"), [("llama", "embed_tokens", ".layers.0."), ("gptj", "wte", ".h.0.")]
)
def test_freeze_fixes_the_token_embeddings_and_lower_layers_of_other_families(tmp_path, task, family, embedding, lower):
    """``finetune.mode: freeze`` on a Llama (it asked for BERT's ``embeddings``) and a GPT-J
    (for GPT-2's ``wpe``): both failed with AttributeError."""
    (llama_folder if family == "llama" else gptj_folder)(tmp_path)
    model = prepare(str(tmp_path), task, {**TUNING, "mode": "freeze"})
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(f".{embedding}." in n for n in frozen) and any(lower in n for n in frozen)
    assert not any(lower.replace("0", "1") in n for n in frozen) and len(frozen) < len(list(model.parameters()))


def test_a_llama_gets_adapters_on_every_backbone_linear_and_none_on_its_head(tmp_path):
    llama_folder(tmp_path)
    model = prepare(str(tmp_path), "caption", {**TUNING, "mode": "lora"})
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_a_base_on_s3_is_copied_once_per_node_and_content(s3_server, tmp_path, monkeypatch):
    """Every worker of every run reads the same local copy of an S3 base (a copy per call left
    one in /tmp each time); a changed folder is a new copy; racing processes leave one copy and
    no half-written one."""
    import threading
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from aigc_ray.storage import S3Settings, Storage
    from aigc_ray.train.model_cache import local_model_dir

    monkeypatch.setenv("AIGC_MODEL_CACHE", str(tmp_path / "cache"))
    storage = Storage(S3Settings(s3_server.endpoint, s3_server.region))
    uri = f"s3://{s3_server.make_bucket('aigc-bases')}/llama"
    llama_folder(tmp_path / "llama")
    for f in sorted((tmp_path / "llama").iterdir()):
        storage.write_bytes(f"{uri}/{f.name}", f.read_bytes())
    init = {"uri": uri, "s3": storage.s3}

    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(local_model_dir(init))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and local_model_dir(init) == got[0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [got[0].rsplit("/", 1)[-1]]  # no partial copy left
    assert AutoModelForCausalLM.from_pretrained(got[0]).config.model_type == "llama"

    # a Hub snapshot holds the model again in other formats and folders: none of them copied
    for extra in ("original/consolidated.00.pth", "onnx/model.onnx", "pytorch_model.bin", "tf_model.h5"):
        storage.write_bytes(f"{uri}/{extra}", b"the same weights again, many GB in a real snapshot")
    copied = sorted(p.name for p in Path(local_model_dir(init)).rglob("*"))
    assert copied == sorted(f.name for f in (tmp_path / "llama").iterdir())

    storage.write_bytes(f"{uri}/README.md", b"a new file: the folder changed")
    assert local_model_dir(init) != got[0]
    assert local_model_dir({"path": str(tmp_path / "llama")}) == str(tmp_path / "llama")  # a local folder as is


def test_the_model_cache_stays_within_its_bound_dropping_the_least_recently_used(tmp_path):
    """Copies used longest ago go first; one used within the hour stays whatever the budget (a
    process may be loading it); a half-made copy is removed only once it is a day old."""
    import os
    import time

    from aigc_ray.train.model_cache import prune

    now = time.time()
    for name, age_s in (("old", 3 * 3600), ("older", 5 * 3600), ("recent", 600), (".abc-half", 2 * 86400)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"w" * 1000)
        os.utime(tmp_path / name, (now - age_s, now - age_s))
    (tmp_path / ".def-copying").mkdir()  # another process copying right now
    assert prune(tmp_path, room=1000, budget=3000, now=now) == [".abc-half", "older"]
    assert prune(tmp_path, room=1000, budget=1000, now=now) == ["old"]  # "recent" is kept over budget
    assert sorted(p.name for p in tmp_path.iterdir()) == [".def-copying", "recent"]


def test_a_new_base_makes_room_in_the_cache_by_dropping_one_unused_for_longest(s3_server, tmp_path, monkeypatch):
    import os
    import time
    from pathlib import Path

    from aigc_ray.storage import S3Settings, Storage
    from aigc_ray.train.model_cache import local_model_dir

    monkeypatch.setenv("AIGC_MODEL_CACHE", str(tmp_path / "cache"))
    storage = Storage(S3Settings(s3_server.endpoint, s3_server.region))
    bucket = s3_server.make_bucket("aigc-cached-bases")
    llama_folder(tmp_path / "llama")
    inits = []
    for name in ("first", "second"):
        for f in sorted((tmp_path / "llama").iterdir()):
            storage.write_bytes(f"s3://{bucket}/{name}/{f.name}", f.read_bytes())
        inits.append({"uri": f"s3://{bucket}/{name}", "s3": storage.s3})
    one_copy = sum(f.stat().st_size for f in (tmp_path / "llama").iterdir())
    monkeypatch.setenv("AIGC_MODEL_CACHE_GB", str(1.5 * one_copy / 2**30))  # room for one copy

    first = Path(local_model_dir(inits[0]))
    two_hours_ago = time.time() - 7200
    os.utime(first, (two_hours_ago, two_hours_ago))
    assert local_model_dir(inits[0]) == str(first) and time.time() - first.stat().st_mtime < 60  # a use marks it
    os.utime(first, (two_hours_ago, two_hours_ago))
    second = Path(local_model_dir(inits[1]))
    assert not first.exists() and [p.name for p in (tmp_path / "cache").iterdir()] == [second.name]
    again = Path(local_model_dir(inits[0]))  # copied again; the second is in use (this hour): kept
    assert again == first and again.is_dir() and second.is_dir()

    monkeypatch.setenv("AIGC_MODEL_CACHE_GB", "lots")
    (tmp_path / "cache" / again.name).rename(tmp_path / "cache" / "moved")  # a miss, so the bound is read
    with pytest.raises(ValueError, match="AIGC_MODEL_CACHE_GB='lots': expected a number of GB"):
        local_model_dir(inits[0])


def test_only_what_loading_reads_is_copied_from_a_model_folder():
    from aigc_ray.models.tuning import model_files

    snapshot = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model"]
    extra = ["pytorch_model.bin", "flax_model.msgpack", "model.ckpt.index", "original/params.json", "onnx/model.onnx"]
    assert model_files(snapshot + extra) == set(snapshot)
    assert model_files(["config.json", "pytorch_model.bin", "onnx/model.onnx"]) == {"config.json", "pytorch_model.bin"}


def test_a_sequence_longer_than_the_bases_positions_is_refused_when_the_spec_loads(tmp_path, capsys):
    """GPT-2's n_positions, Llama's max_position_embeddings: past them the first step would fail
    as an index error deep in a worker; a local folder is checked with the spec, before Ray."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_ray.cli import main
    from aigc_ray.spec import SpecError
    from aigc_ray.spec.load import check_fits_positions

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=1)).save_pretrained(
        tmp_path / "gpt2"
    )
    llama_folder(tmp_path / "llama")  # 64 positions
    quickstart = ["-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path / 'runs'}"]
    for argv, message in [
        (["finetune", "--set", f"finetune.base={tmp_path / 'gpt2'}", "--set", "finetune.seq_len=24"], "16 positions"),
        (["pretrain", "--set", f"pretrain.init={tmp_path / 'llama'}", "--set", "pretrain.seq_len=128"], "64 positions"),
    ]:
        assert main([argv[0], *quickstart, *argv[1:]]) == 1
        err = capsys.readouterr().err
        assert message in err and "seq_len" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    with pytest.raises(SpecError, match="finetune.seq_len 24 is longer than the 16 positions"):
        check_fits_positions({"n_positions": 16}, 24, "finetune.seq_len", "s3://b/gpt2")  # an S3 base, at its stage
    check_fits_positions({"max_position_embeddings": 64}, 64, "pretrain.seq_len", "s3://b/llama")


def test_a_bf16_base_trains_in_float32_and_goes_back_to_bf16(tmp_path):
    """Llama, Qwen and Mistral ship their weights in bf16, and transformers 5 loads them so:
    trained as they load, every update below bf16's step (8 bits of mantissa) would vanish.
    The base is trained in float32 (DeepSpeed casts under ``precision: bf16`` and keeps float32
    master weights) and the export returns to the dtype the user brought."""
    import json

    from transformers import AutoModelForCausalLM

    from aigc_ray.models.tuning import in_saved_dtype
    from aigc_ray.spec.training import saved_dtype

    llama_folder(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).to(torch.bfloat16).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16  # what transformers does
    for mode in ("full", "lora"):
        model = prepare(str(tmp_path), "caption", {**TUNING, "mode": mode})
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert in_saved_dtype(model, config).dtype == torch.bfloat16
    assert (
        saved_dtype({"torch_dtype": "float16"}) == "float16"
        and saved_dtype({}) == saved_dtype({"dtype": "int8"}) == "float32"
    )


def test_a_classifier_trained_for_other_labels_gets_a_new_head_named_by_our_classes(tmp_path):
    """A base that is already a classifier — a sentiment model's two labels (NEGATIVE, POSITIVE),
    or as many labels as ours with other names — loaded for our classes: a head of our size,
    initialised afresh, the encoder kept, and the config naming our classes (``pipeline()`` on
    the export answers a class name). Loading it as it was failed on the head's size. A head for
    exactly our classes (our own export, fine-tuned again) is kept as it was trained."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    classes = ["circle", "square", "triangle"]

    def classifier(folder, labels: list[str]) -> dict:
        torch.manual_seed(1)
        config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=len(labels))
        config.id2label, config.label2id = dict(enumerate(labels)), {n: k for k, n in enumerate(labels)}
        model = DistilBertForSequenceClassification(config)
        model.save_pretrained(folder)
        return model.state_dict()

    tuning = {**TUNING, "mode": "full", "classes": classes}
    for labels in (["NEGATIVE", "POSITIVE"], ["cat", "dog", "bird"]):
        folder = tmp_path / "-".join(labels)
        saved = classifier(folder, labels)
        torch.manual_seed(0)
        model = prepare(str(folder), "classify", tuning)
        assert model.config.id2label == dict(enumerate(classes)) and model.config.label2id["triangle"] == 2
        assert model.classifier.weight.shape == (3, 32)
        state = model.state_dict()
        assert torch.equal(
            state["distilbert.transformer.layer.1.ffn.lin2.weight"],
            saved["distilbert.transformer.layer.1.ffn.lin2.weight"],
        )
        assert not torch.equal(state["pre_classifier.weight"], saved["pre_classifier.weight"])  # another task's head
        assert state["classifier.bias"].abs().sum() == 0 and 0.01 < state["classifier.weight"].std() < 0.03
        model.save_pretrained(tmp_path / "export")
        assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").config.id2label[1] == "square"

    ours = tmp_path / "ours"
    saved = classifier(ours, classes)
    kept = prepare(str(ours), "classify", tuning).state_dict()
    assert all(
        torch.equal(kept[k], saved[k]) for k in ("pre_classifier.weight", "classifier.weight", "classifier.bias")
    )


def test_continued_pretraining_keeps_an_instruct_inits_chat_template_and_end_of_turn(tmp_path):
    """The export of ``pretrain.init`` is written from the model's config; the init's chat
    template and its generation config (the end-of-turn id an answer stops at) come along, or
    a served continued instruct model would run past the end of its turn."""
    from base_models import CHAT_TEMPLATE, EOT, instruct_llama_folder
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from aigc_ray.storage import Storage
    from aigc_ray.train.pretrain import copy_init_side_files

    init, out = tmp_path / "init", tmp_path / "export"
    instruct_llama_folder(init)
    (init / "original").mkdir()
    (init / "original" / "tokenizer.model").write_bytes(b"Meta's own copy: not the export's")
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(init)).save_pretrained(out)  # as the export writes it
    copy_init_side_files(Storage(), str(init), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tokenizer.convert_tokens_to_ids(EOT) in (eos if isinstance(eos, list) else [eos])
    assert not (out / "original").exists() and not (out / "tokenizer.model").exists()


def test_a_tokenizer_larger_than_the_models_embeddings_is_refused_before_training(tmp_path):
    """A token added to the tokenizer without resizing the model (a pad token, a chat marker):
    the first batch holding it would fail as an index error deep in a worker. Refused at the
    stage's start, naming both sizes."""
    from transformers import AutoTokenizer

    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, StorageError
    from aigc_ray.train.finetune import finetune

    llama_folder(tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    rows = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.save_pretrained(tmp_path / "llama")
    spec = load_spec(None, [f"storage.root={tmp_path / 'runs'}", f"finetune.base={tmp_path / 'llama'}"])
    with pytest.raises(StorageError, match=rf"has {rows + 1} tokens but the model embeds {rows}: resize"):
        finetune(spec, Storage(), log=lambda *_: None)
