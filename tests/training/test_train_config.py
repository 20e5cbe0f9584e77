"""Config validation: every mistake is a ValueError naming the key, raised before any model is built."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from trainhelpers import tiny_config, write_config

from affect_llm.cli.main import main
from affect_llm.precision import native_bf16, resolve_training_precision
from affect_llm.training.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["training/smoke.yaml", "training/gpu_7b_qlora.yaml", "training/gpu_7b_lora_bf16.yaml"]


@pytest.fixture
def no_model_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build a model fails the test: validation must come first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built during config validation")

    monkeypatch.setattr("affect_llm.loading.build.build_model", refuse)
    monkeypatch.setattr("affect_llm.loading.build.instantiate", refuse)


def _raw(tmp_path: Path) -> dict:
    return tiny_config(tmp_path / "manifest.jsonl", tmp_path / "run", None, stages=2)


def _load(tmp_path: Path, raw: dict, overrides: list[str] | None = None):
    return load_config(write_config(tmp_path / "config.yaml", raw), overrides)


def test_valid_config_loads(tmp_path: Path, no_model_builds: None) -> None:
    config = _load(tmp_path, _raw(tmp_path))
    assert [s.name for s in config.stages] == ["align", "reason"]
    assert config.stages[0].init == "previous"  # as written: validation changes nothing
    assert config.start_point(0) == "base"  # the first stage has nothing previous to start from


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda r: r.update(learning_rate=1.0), "learning_rate"),
        (lambda r: r["train"].update(batchsize=2), "batchsize"),
        (lambda r: r["stages"][0].update(lr_max=1.0), "lr_max"),
        (lambda r: r["model"].update(vision="tiny:siglip"), "vision"),
        (lambda r: r["data"]["datasets"]["synth"].update(path="x"), "path"),
        (lambda r: r["lora"].update(rank=4), "rank"),
    ],
    ids=["top", "train", "stage", "model", "dataset", "lora"],
)
def test_unknown_key_is_named(tmp_path: Path, no_model_builds: None, edit, named: str) -> None:
    raw = _raw(tmp_path)
    edit(raw)
    with pytest.raises(ValueError, match=named):
        _load(tmp_path, raw)


def test_missing_required_key_is_named(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    del raw["stages"]
    with pytest.raises(ValueError, match="missing key 'stages'"):
        _load(tmp_path, raw)


def test_undeclared_dataset_is_named(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["stages"][1]["datasets"] = {"synth": 1.0, "meld": 1.0}
    with pytest.raises(ValueError, match=r"stage 'reason'.*'meld'.*not declared"):
        _load(tmp_path, raw)


def test_unknown_trainable_group_is_named(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["stages"][0]["trainable"] = ["projectors", "adapters"]
    with pytest.raises(ValueError, match=r"stage 'align'.*'adapters'"):
        _load(tmp_path, raw)


def test_steps_and_epochs_both_set_is_refused(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["stages"][0]["epochs"] = 1.0
    with pytest.raises(ValueError, match=r"stage 'align'.*steps or epochs"):
        _load(tmp_path, raw)


def test_neither_steps_nor_epochs_is_refused(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    del raw["stages"][0]["steps"]
    with pytest.raises(ValueError, match=r"stage 'align'.*steps or epochs"):
        _load(tmp_path, raw)


def test_lora_group_without_lora_block_is_refused(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    del raw["lora"]
    with pytest.raises(ValueError, match=r"stage 'reason' trains 'lora'.*no lora"):
        _load(tmp_path, raw)


def test_unknown_task_is_named(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["stages"][0]["tasks"] = {"summarise": 1.0}
    with pytest.raises(ValueError, match=r"stage 'align'.*'summarise'.*prompt file"):
        _load(tmp_path, raw)


def test_error_names_the_config_file(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["stages"][0]["order"] = "hard_to_easy"
    with pytest.raises(ValueError, match=r"config\.yaml.*order='hard_to_easy'"):
        _load(tmp_path, raw)


def test_overrides_are_applied(tmp_path: Path, no_model_builds: None) -> None:
    config = _load(tmp_path, _raw(tmp_path), ["train.batch_size=4", "stages.0.steps=3", "stages.1.lr=2.0e-5"])
    assert config.train.batch_size == 4
    assert config.stages[0].steps == 3
    assert config.stages[1].lr == pytest.approx(2e-5)


def test_exponent_without_dot_is_a_number_or_refused(tmp_path: Path, no_model_builds: None) -> None:
    try:
        config = _load(tmp_path, _raw(tmp_path), ["stages.1.lr=1e-5"])
    except ValueError as error:
        assert "lr" in str(error)
    else:
        assert config.stages[1].lr == pytest.approx(1e-5)


def test_override_without_equals_is_refused() -> None:
    with pytest.raises(ValueError, match="train.batch_size"):
        apply_overrides({"train": {}}, ["train.batch_size"])


def test_overrides_after_a_flag_are_taken_and_other_words_refused(
    tmp_path: Path, no_model_builds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "config.yaml", _raw(tmp_path))
    # The override comes after the flags: taken, so its bad value is what stops the check.
    assert main(["train", str(config), "--check", "--config-only", "train.attention=flash_attention2"]) == 2
    assert "train.attention='flash_attention2'" in capsys.readouterr().err
    assert main(["train", str(config), "--check", "--config-only", "train.batch_size=4"]) == 0
    assert main(["train", str(config), "--check", "--config-only", "stray"]) == 2
    assert "unrecognized arguments: stray (see `affect-llm --help`)" in capsys.readouterr().err
    # Only the word that is neither a flag nor an override is named.
    assert main(["train", str(config), "--check", "train.batch_size=2", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus (see" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ('train.compile="false"', "train.compile='false'; expected true or false"),
    ("train.gradient_checkpointing=maybe",
     "train.gradient_checkpointing='maybe'; expected true, false or a share of the LLM's layers from 0 to 1"),
    ("train.gradient_checkpointing=1.5",
     "train.gradient_checkpointing=1.5; expected true, false or a share of the LLM's layers from 0 to 1"),
    ("train.batch_size=four", "train.batch_size='four'; expected a whole number"),
    ("train.attention=1", "train.attention=1; expected the name of an attention implementation"),
    ("train.packed_rows=-1", "train.packed_rows=-1; expected 0 (pad) or a number of rows"),
    ("train.packed_rows=two", "train.packed_rows='two'; expected a whole number"),
    ("stages.5.steps=2", "override 'stages.5.steps=2': stages.5 is not an index of a list of 2"),
    ("stages.align.steps=2", "stages.align is not an index of a list of 2"),
    ("train.batch_size.x=1", "override 'train.batch_size.x=1': train.batch_size is a value (4), not a mapping"),
    ("train.batch_size=[4", "override 'train.batch_size=[4': not valid YAML at line 1, column 3"),
])
def test_a_bad_run_setting_or_override_path_is_a_usage_error_naming_it(
    tmp_path: Path, no_model_builds: None, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    config = write_config(tmp_path / "config.yaml", _raw(tmp_path))
    assert main(["train", str(config), override, "--check", "--config-only"]) == 2
    assert message in capsys.readouterr().err


def test_a_config_that_is_not_yaml_is_a_usage_error_naming_the_file_and_line(
    tmp_path: Path, no_model_builds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nrun_dir: [x\n")
    assert main(["train", str(config), "--check", "--config-only"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not valid YAML at line 3, column 1" in err and "internal error" not in err


def test_override_is_validated(tmp_path: Path, no_model_builds: None) -> None:
    with pytest.raises(ValueError, match="precision"):
        _load(tmp_path, _raw(tmp_path), ["train.precision=fp8"])


def test_a_misspelt_attention_kernel_is_named_when_the_config_loads(tmp_path: Path, no_model_builds: None) -> None:
    with pytest.raises(ValueError, match=r"train.attention='flash_attention2': expected auto, one of .*'eager'"):
        _load(tmp_path, _raw(tmp_path), ["train.attention=flash_attention2"])
    assert _load(tmp_path, _raw(tmp_path), ["train.attention=eager"]).train.attention == "eager"


@pytest.mark.parametrize(("precision", "cuda", "expected"), [
    ("no", False, "sdpa"), ("bf16", False, "eager"), ("fp16", False, "eager"), ("bf16", True, "sdpa"),
])
def test_auto_attention_is_matmul_only_under_cpu_autocast(
    tmp_path: Path, no_model_builds: None, monkeypatch: pytest.MonkeyPatch, precision: str, cuda: bool, expected: str
) -> None:
    """Resolved once as the config loads, beside the precision, so the run records the kernel it used
    (the CUDA answer is patched in: this machine has none)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = _load(tmp_path, _raw(tmp_path), ["train.attention=auto", f"train.precision={precision}"])
    assert config.train.attention == expected


def test_auto_precision_is_bf16_only_where_the_machine_multiplies_bf16_natively(
    tmp_path: Path, no_model_builds: None
) -> None:
    config = _load(tmp_path, _raw(tmp_path), ["train.precision=auto"])
    # This machine's answer, read from its own CPU flags / CUDA, not assumed.
    assert config.train.precision == ("bf16" if native_bf16() else "no")
    assert resolve_training_precision("no") == "no" and resolve_training_precision("bf16") == "bf16"


def test_a_stage_may_set_its_own_checkpointing_and_compile(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["train"].update(gradient_checkpointing=True)
    raw["stages"][0].update(gradient_checkpointing=False, compile=True)
    config = _load(tmp_path, raw)
    assert (config.stages[0].gradient_checkpointing, config.stages[0].compile) == (False, True)
    assert (config.stages[1].gradient_checkpointing, config.stages[1].compile) == (None, None)  # the run's
    raw["stages"][1].update(compile="auto")
    with pytest.raises(ValueError, match=r"stage 'reason': compile='auto'; expected true or false"):
        _load(tmp_path, raw)


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_configs_pass_check_offline(
    config: str, monkeypatch: pytest.MonkeyPatch, no_model_builds: None, capsys: pytest.CaptureFixture
) -> None:
    """``--check`` on the GPU configs names hub ids but must touch neither the network nor the hub cache."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"--check opened a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    monkeypatch.chdir(REPO)
    assert main(["train", config, "--check", "--config-only"]) == 0
    assert f"{config}: ok" in capsys.readouterr().out


@pytest.mark.parametrize("config", SHIPPED[1:])
def test_gpu_configs_describe_the_7b_curriculum(config: str) -> None:
    raw = yaml.safe_load((REPO / config).read_text())
    assert raw["model"]["llm"] == "Qwen/Qwen2.5-7B-Instruct"
    assert raw["model"]["dtype"] == "bfloat16" and raw["train"]["precision"] == "bf16"
    assert raw["train"]["gradient_checkpointing"] is True
    assert [s["trainable"] for s in raw["stages"]] == [
        ["projectors"],
        ["projectors", "lora"],
        ["projectors", "lora"],
    ]
    assert raw["stages"][2]["order"] == "easy_to_hard"
    assert raw["model"]["quantization"] == ("4bit" if "qlora" in config else "none")


def test_check_refuses_a_task_no_row_can_answer(tmp_path: Path, synth_manifest: Path, capsys) -> None:
    """A task needing explanations on rows without them fails in --check, not after model set-up."""
    rows = [json.loads(line) for line in synth_manifest.read_text().splitlines()]
    manifest = tmp_path / "no_explanations.jsonl"
    manifest.write_text("".join(json.dumps({**row, "explanation": None}) + "\n" for row in rows))
    raw = tiny_config(manifest, tmp_path / "run", None, stages=2)
    raw["stages"][1]["tasks"] = {"reason": 1.0}
    assert main(["train", str(write_config(tmp_path / "c.yaml", raw)), "--check"]) == 1
    out = capsys.readouterr().out
    assert "stage 'reason': task 'reason': none of the" in out


def test_check_names_a_missing_manifest(tmp_path: Path, capsys) -> None:
    raw = tiny_config(tmp_path / "absent.jsonl", tmp_path / "run", None)
    assert main(["train", str(write_config(tmp_path / "c.yaml", raw)), "--check"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^affect-llm train: error: dataset 'synth': manifest .*absent.jsonl not found \(prepare it", err)


def test_unknown_projector_kind_is_refused(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    raw["model"]["face_projector"] = "qformer"
    with pytest.raises(ValueError, match=r"face_projector='qformer'"):
        _load(tmp_path, raw)


def test_a_stage_whose_rows_serve_none_of_its_tasks_is_refused_by_the_schedule() -> None:
    """The sampling loop would otherwise spin forever looking for a usable row."""
    from affect_llm.data.manifest import ManifestRow
    from affect_llm.training.config import StageConfig
    from affect_llm.training.schedule import build_schedule

    stage = StageConfig(name="s", datasets={"d": 1.0}, tasks={"reason": 1.0}, trainable=["projectors"], steps=1)
    rows = [ManifestRow(id="a"), ManifestRow(id="b")]
    with pytest.raises(ValueError, match="no training row of dataset 'd' can serve its tasks"):
        build_schedule(stage, {"d": rows}, lambda row, task: False, 2, 1, seed=0)


def test_capped_validation_reads_every_dataset_and_every_part_of_each() -> None:
    """40 synthetic rows, then 90 Polish rows sorted by label: a cap of 16 must not be 16 synthetic rows."""
    from affect_llm.data.manifest import ManifestRow
    from affect_llm.training.config import StageConfig
    from affect_llm.training.schedule import validation_samples

    stage = StageConfig(name="s", datasets={"synth": 3.0, "polish": 1.0}, tasks={"reason": 1.0},
                        trainable=["projectors"], steps=1)
    rows = {"synth": [ManifestRow(id=f"s{i}", labels=["happy"]) for i in range(40)],
            "polish": [ManifestRow(id=f"p{i}", labels=[("angry", "fearful", "neutral")[i // 30]]) for i in range(90)]}
    samples = validation_samples(stage, rows, lambda row, task: True, 16)
    assert len(samples) == 16 and len(set(samples)) == 16
    labels = {rows[s.dataset][s.index].labels[0] for s in samples if s.dataset == "polish"}
    assert {s.dataset for s in samples} == {"synth", "polish"} and labels == {"angry", "fearful", "neutral"}
    assert validation_samples(stage, rows, lambda row, task: True, 500) == validation_samples(
        stage, rows, lambda row, task: True, 130)  # under the cap: every row, in order


def test_loading_a_config_does_not_import_model_code() -> None:
    """Parsing and checking a YAML loads no model, processing or training-loop module."""
    import subprocess
    import sys

    code = ("import sys; import affect_llm.training.config as c; "
            "heavy = [m for m in ('affect_llm.loading.build', 'affect_llm.training.recipe', 'peft') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("override", "words"), [
    ({"steps": "1e3"}, "stage 'align': steps='1e3'; expected a whole number"),
    ({"steps": 2.5}, "stage 'align': steps=2.5; expected a whole number"),
    ({"steps": 0}, "stage 'align': steps=0; expected 1 or more"),
    ({"warmup_steps": "five"}, "stage 'align': warmup_steps='five'; expected a whole number"),
    ({"datasets": ["synth"]}, "stage 'align': datasets=['synth']; expected a mapping of name: weight"),
    ({"trainable": "projectors"}, "stage 'align': trainable='projectors'; expected a list of groups"),
])
def test_stage_values_of_the_wrong_kind_name_their_key(tmp_path: Path, no_model_builds: None, override: dict,
                                                       words: str) -> None:
    raw = _raw(tmp_path)
    raw["stages"][0].update(override)
    with pytest.raises(ValueError, match=re.escape(words)):
        _load(tmp_path, raw)


def test_a_bare_no_is_the_precision_no(tmp_path: Path, no_model_builds: None) -> None:
    raw = _raw(tmp_path)
    assert _load(tmp_path, raw, ["train.precision=no"]).train.precision == "no"


def test_check_warns_of_a_validation_split_with_no_rows(tmp_path: Path, synth_manifest: Path, capsys) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None, stages=1)
    raw["data"]["datasets"]["synth"]["val_split"] = "valid"
    assert main(["train", str(write_config(tmp_path / "c.yaml", raw)), "--check"]) == 0
    assert "warning: dataset 'synth': no rows in its validation split 'valid'" in capsys.readouterr().out


def test_check_refuses_an_init_that_is_no_checkpoint(tmp_path: Path, synth_manifest: Path, capsys) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None, stages=2)
    raw["stages"][1]["init"] = str(tmp_path / "prevous")
    assert main(["train", str(write_config(tmp_path / "c.yaml", raw)), "--check"]) == 1
    assert "stage 'reason': init=" in capsys.readouterr().out
