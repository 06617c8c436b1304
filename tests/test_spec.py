"""The experiment spec: good specs load, every bad one is refused with path, value and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aigc_ray.cli import main
from aigc_ray.layout import data_root
from aigc_ray.spec import ExperimentSpec, SpecError, load_spec, spec_hash

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    return info.value.problems


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid(example):
    assert isinstance(load_spec(example), ExperimentSpec)


def test_defaults_run_on_a_laptop():
    spec = load_spec(None)
    assert spec.storage.root == os.path.abspath("./runs")  # workers run elsewhere: paths are absolute
    assert spec.ray.env_vars["OMP_NUM_THREADS"] == "1"
    assert spec.pretrain.zero_stage in (0, 1, 2, 3) and spec.pretrain.num_workers <= 2
    assert data_root(spec) == os.path.abspath("./runs/data")
    assert set(ExperimentSpec.model_fields) >= {
        "data",
        "pretrain",
        "finetune",
        "gan",
        "fusion",
        "ensemble",
        "serve",
        "cluster",
        "storage",
        "ray",
    }


def test_typo_is_an_error_with_a_suggestion(tmp_path):
    found = problems(write(tmp_path, "data:\n  rows_per_shrd: 10\n"))
    assert len(found) == 1
    assert found[0].startswith("data.rows_per_shrd: unknown key; did you mean 'rows_per_shard'?")
    assert "allowed:" in found[0] and "batch_size" in found[0]


def test_unknown_top_level_section(tmp_path):
    (line,) = problems(write(tmp_path, "storag:\n  root: /x\n"))
    assert line.startswith("storag: unknown key; did you mean 'storage'?")


def test_every_problem_is_reported_at_once_with_path_value_and_allowed(tmp_path):
    spec = write(
        tmp_path,
        """
data:
  shuffle: sometimes
  splits: {train: 0.9, val: 0.2, test: 0.1}
pretrain:
  zero_stage: 5
  model: {n_embd: 65, n_head: 2}
serve:
  port: 99999
""",
    )
    found = problems(spec)
    assert len(found) == 5
    joined = "\n".join(found)
    assert "data.shuffle = \"sometimes\": Input should be 'none', 'files' or 'global'" in joined
    assert "pretrain.zero_stage = 5: Input should be 0, 1, 2 or 3" in joined
    assert "serve.port = 99999: Input should be less than or equal to 65535" in joined
    assert "data.splits" in joined and "must sum to 1.0, got 1.2" in joined
    assert "pretrain.model" in joined and "n_embd (65) must be divisible by n_head (2)" in joined


def test_secrets_are_refused_in_the_spec(tmp_path):
    (line,) = problems(write(tmp_path, "ray:\n  env_vars:\n    AWS_SECRET_ACCESS_KEY: abc\n"))
    assert line.startswith("ray.env_vars") and "secret" in line


def test_duplicate_keys_are_refused(tmp_path):
    (line,) = problems(write(tmp_path, "data:\n  seed: 1\n  seed: 2\n"))
    assert "duplicate key 'seed'" in line and "line 3" in line


def test_yaml_syntax_error_and_missing_file(tmp_path):
    (line,) = problems(write(tmp_path, "data: [unclosed\n"))
    assert "not valid YAML" in line
    (line,) = problems(tmp_path / "nope.yaml")
    assert "spec file not found" in line


def test_overrides_are_typed_and_validated(tmp_path):
    spec = load_spec(
        None, ["data.seed=7", "data.equal_shards=false", "pretrain.precision=bf16", "storage.root=s3://b/p"]
    )
    assert spec.data.seed == 7 and spec.data.equal_shards is False
    assert spec.pretrain.precision == "bf16" and data_root(spec) == "s3://b/p/data"
    assert problems(None, ["data.seed=abc"]) == [
        'data.seed = "abc": Input should be a valid integer, unable to parse string as an integer'
    ]
    assert problems(None, ["data.sead=1"])[0].startswith("data.sead: unknown key; did you mean 'seed'?")
    assert (
        "data.seed is a value, not a section" in problems(write(tmp_path, "data:\n  seed: 1\n"), ["data.seed.x=1"])[0]
    )
    assert problems(None, ["data.seed.x=1"]) == ['data.seed = {"x": 1}: Input should be a valid integer']
    assert "expected KEY.PATH=VALUE" in problems(None, ["data.seed"])[0]


def test_generation_settings_are_checked():
    assert "frames (6) must be a multiple of 4" in problems(None, ["video.frames=6"])[0]
    assert (
        "unknown generator(s) ['biggan']"
        in problems(None, ["gan.sweep.search_space={generator: {type: choice, values: [style, biggan]}}"])[0]
    )
    assert problems(None, ["gan.generator=vq"])[0].startswith(
        "gan.generator = \"vq\": Input should be 'dcgan' or 'style'"
    )
    assert (
        "PBT in the GAN sweep needs a dimension it can mutate"
        in problems(
            None,
            ["gan.sweep.scheduler=pbt", "gan.sweep.search_space={generator: {type: choice, values: [dcgan, style]}}"],
        )[0]
    )
    assert "less than or equal to 4" in problems(None, ["fusion.augment_ratio=5"])[0]
    assert problems(None, ["fusion.augment_ratio=1"]) == [
        "spec: fusion augmentation draws labelled samples from this experiment's GAN, which must then be "
        "text-to-image: set gan.condition: caption (or point fusion.augment_generator at one)"
    ]
    spec = load_spec(
        None, ["gan.condition=caption", "fusion.sweep.search_space={augment_ratio: {type: choice, values: [0, 0.5]}}"]
    )
    assert spec.fusion.sweep.search_space["augment_ratio"].values == [0, 0.5]


def test_a_batch_the_ingress_can_never_fill_is_refused():
    # The ingress forms the batches: it holds max_ongoing_requests x replicas + max_queued_requests.
    assert load_spec(None, ["serve.max_batch_size=32", "serve.max_ongoing_requests=16"]).serve.max_batch_size == 32
    (problem,) = problems(
        None, ["serve.max_batch_size=32", "serve.max_ongoing_requests=4", "serve.max_queued_requests=8"]
    )
    assert "max_batch_size (32) cannot exceed max_ongoing_requests x replicas + max_queued_requests (12)" in problem


def test_spec_hash_is_stable_and_sensitive():
    a, b = load_spec(None), load_spec(None)
    assert spec_hash(a) == spec_hash(b)
    c = load_spec(None, ["data.seed=1"])
    assert spec_hash(a) != spec_hash(c)
    assert spec_hash(a, "pretrain") == spec_hash(c, "pretrain")


def test_validate_command_exit_codes_and_output(tmp_path, capsys):
    good = write(tmp_path, "name: ok\n")
    assert main(["validate", str(good)]) == 0
    assert "is a valid experiment spec" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: 0\n  shufle: none\n")
    assert main(["validate", str(bad), "--set", "serve.port=0"]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "data.batch_size = 0: Input should be greater than or equal to 1" in err
    assert "data.shufle: unknown key; did you mean 'shuffle'?" in err
    assert "serve.port = 0" in err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "aigc_ray.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("validate", "run", "data"):
        assert command in out.stdout
    aigc = Path(sys.executable).parent / "aigc"
    res = subprocess.run(
        [str(aigc), "validate", str(REPO / "examples" / "quickstart.yaml")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_validate_says_what_the_spec_will_cost(capsys):
    from aigc_ray.cli import main

    assert main(["validate", "examples/quickstart.yaml", "--set", "gan.sweep.num_samples=3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    spec = load_spec("examples/quickstart.yaml", ["gan.sweep.num_samples=3"])
    gan = spec.gan.sweep
    assert lines["sweep_gan"].split()[1] == "6"  # 3 samples x the 2-generator grid
    per_trial = gan.max_iterations * gan.steps_per_iteration
    assert f"{6 * per_trial:,} in all" in lines["sweep_gan"]
    assert f"{spec.pretrain.max_steps:,} steps x {spec.pretrain.global_batch_size} sequences" in lines["pretrain"]
    total = (
        spec.pretrain.max_steps
        + spec.finetune.max_steps
        + 6 * per_trial
        + sum(
            s.num_samples * s.max_iterations * s.steps_per_iteration
            for s in (spec.video.sweep, spec.fusion.sweep)  # no grids in these two
        )
    )
    assert lines["total"].endswith(f"at most {total:,} training steps")


def test_finetune_base_is_our_export_minilm_or_a_hugging_face_folder(tmp_path, capsys):
    from aigc_ray.cli import main

    folder = tmp_path / "my-gpt2"
    folder.mkdir()
    (tmp_path / "empty").mkdir()
    for base, message in (
        (tmp_path / "nowhere", "no folder at"),
        (tmp_path / "empty", "is not a Hugging Face model folder: it has no config.json"),
    ):
        assert main(["validate", "examples/quickstart.yaml", "--set", f"finetune.base={base}"]) == 1
        err = capsys.readouterr().err
        assert "finetune.base" in err and message in err, err
    (folder / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    spec = load_spec(None, [f"finetune.base={folder}"])
    assert spec.finetune.base == str(folder)
    assert load_spec(None, ["finetune.base=s3://bucket/models/gpt2"]).finetune.base == "s3://bucket/models/gpt2"
