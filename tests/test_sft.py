"""SFT stage: LoRA/QLoRA/full training on tiny and embedded models, the loss mask, saved outputs, recipes, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from teams_rl.core.errors import TeamsRLError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "sft_dataset"
RECIPE = ROOT / "recipes" / "smollm2-135m" / "sft" / "config_lora.yaml"
QLORA_RECIPE = ROOT / "recipes" / "smollm2-135m" / "sft" / "config_qlora.yaml"
# Small, fast, deterministic runs: no checkpoints, no tensorboard, no eval unless a test asks for it.
FAST = [
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--test_split_size",
    "0",
    "--report_to",
    "none",
    "--warmup_steps",
    "0",
    "--lr_scheduler_type",
    "constant",
    "--max_length",
    "128",
    "--per_device_train_batch_size",
    "4",
    "--gradient_accumulation_steps",
    "1",
    "--dataloader_pin_memory",
    "false",
]


def _args(model: str, out: Path, *extra: str, recipe: Path = RECIPE) -> list[str]:
    return [
        "--config",
        str(recipe),
        "--model_name_or_path",
        model,
        "--dataset_name",
        str(DATA),
        "--output_dir",
        str(out),
        *FAST,
        *extra,
    ]


def _train(argv: list[str]):
    """Run ``teams_rl.sft.main`` in-process; returns the final folder and the logged training losses."""
    from transformers import TrainerCallback

    from teams_rl.sft.train import main

    class Losses(TrainerCallback):
        def __init__(self):
            self.losses, self.evals, self.models = [], [], []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.models.append(model)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evals.append(metrics["eval_loss"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    seen = Losses()
    return main(argv, callbacks=[seen]), seen


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(["Name the capital of France."], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """Ten LoRA steps on the tiny Llama at a high learning rate, with a merged copy and a held-out eval split."""
    out = tmp_path_factory.mktemp("sft-tiny")
    final, seen = _train(
        _args(
            tiny_model_dir,
            out,
            "--max_steps",
            "10",
            "--learning_rate",
            "1e-2",
            "--test_split_size",
            "0.2",
            "--eval_on_start",
            "true",
            "--save_merged",
            "true",
        )
    )
    return out, final, seen


def test_lora_on_tiny_model_lowers_loss_and_writes_outputs(tiny_run):
    out, final, seen = tiny_run
    assert final == out / "adapter"
    assert len(seen.losses) == 10
    assert sum(seen.losses[-3:]) / 3 < sum(seen.losses[:3]) / 3 - 0.1, seen.losses
    assert len(seen.evals) == 2 and seen.evals[1] < seen.evals[0] - 0.1, seen.evals  # held-out rows, before/after
    assert (final / "adapter_model.safetensors").stat().st_size > 1000
    card = (out / "README.md").read_text()
    sha = __import__("hashlib").sha256((DATA / "rows.jsonl").read_bytes()).hexdigest()
    assert f"sha256:{sha}" in card and "config_lora.yaml" in card and "eval_loss" in card
    assert "- trl " in card and "- peft " in card and "base_model:" in card
    assert (final / "README.md").read_text() == card
    assert (out / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "runs").glob("*")) == []  # report_to none: no tensorboard logs
    resolved = yaml.safe_load((out / "config" / "sft.yaml").read_text())
    assert resolved["learning_rate"] == 0.01 and resolved["dataset_name"] == str(DATA)
    # Generation stops on the chat template's end of turn.
    tokenizer_config = json.loads((final / "tokenizer_config.json").read_text())
    generation = json.loads((final / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]


def test_saved_adapter_reloads_with_peft_and_changes_outputs(tiny_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, final, _ = tiny_run
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(final)).eval()
    after = _logits(tuned, tokenizer)
    assert (after - before).abs().max() > 1e-2
    # The merged copy is the same function as base + adapter, loadable without peft.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    torch.testing.assert_close(_logits(merged, tokenizer), after, atol=1e-4, rtol=1e-4)


def test_lora_on_embedded_model_lowers_loss(smollm2_dir, tmp_path):
    final, seen = _train(
        _args(
            "smollm2-135m",
            tmp_path,
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-3",
            "--per_device_train_batch_size",
            "2",
            "--test_split_size",
            "0.1",
            "--eval_on_start",
            "true",
        )
    )
    assert final is not None and (final / "adapter_model.safetensors").exists()
    assert len(seen.losses) == 4 and seen.losses[-1] < seen.losses[0], seen.losses
    assert len(seen.evals) == 2 and seen.evals[1] < seen.evals[0], seen.evals  # held-out rows, before/after
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in (final / "README.md").read_text()


def test_completion_only_mask_covers_the_answer_only(tiny_model_dir, tmp_path):
    from teams_rl.sft.args import parse
    from teams_rl.sft.train import build_trainer

    rows = tmp_path / "one.jsonl"
    rows.write_text(
        json.dumps({"instruction": "Add the two numbers.", "input": "17 and 25", "response": "17 + 25 = 42."}) + "\n"
    )
    (script, training, model, mixture), _ = parse(
        [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            tiny_model_dir,
            "--dataset_name",
            str(rows),
            "--output_dir",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    trainer, sources, template, _ = build_trainer(script, training, model, mixture)
    assert template == "model's own" and sources[0]["kind"] == "file"
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tokenizer = trainer.processing_class
    text = tokenizer.decode(ids)
    answer = "17 + 25 = 42.<|im_end|>"
    assert text.endswith("<|im_start|>assistant\n" + answer + "\n")
    kept = tokenizer.decode(ids[labels != -100])
    assert kept.startswith(answer)
    assert kept.strip() == answer  # at most the template's trailing newline after the end of turn
    first_kept = int((labels != -100).nonzero()[0])
    assert (labels[:first_kept] == -100).all()
    assert tokenizer.decode(ids[:first_kept]).endswith("17 and 25<|im_end|>\n<|im_start|>assistant\n")


def test_qlora_4bit_base_trains_on_cpu(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    final, seen = _train(
        _args(tiny_model_dir, tmp_path, "--max_steps", "2", "--learning_rate", "1e-2", recipe=QLORA_RECIPE)
    )
    linear4bit = [type(m).__name__ for m in seen.models[0].modules() if type(m).__name__ == "Linear4bit"]
    assert linear4bit, "the base was not loaded in 4 bit"
    assert len(seen.losses) == 2 and all(loss == loss for loss in seen.losses)  # finite, not NaN
    assert (final / "adapter_model.safetensors").stat().st_size > 1000
    assert "QLoRA (4-bit nf4)" in (final / "README.md").read_text()


def test_full_fine_tune_saves_a_model(tiny_model_dir, tmp_path):
    from teams_rl.sft.weights import verify_weights

    final, seen = _train(
        _args(tiny_model_dir, tmp_path, "--max_steps", "2", "--use_peft", "false", "--learning_rate", "1e-3")
    )
    assert final == tmp_path / "model" and (final / "config.json").exists()
    assert verify_weights(final) > 3_000_000  # every weight, not an adapter
    assert "full fine-tune" in (final / "README.md").read_text()


def test_resume_from_last_checkpoint_then_skip_when_complete(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from teams_rl.sft.train import main

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    class Steps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    argv = _args(tiny_model_dir, tmp_path, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    with pytest.raises(KeyboardInterrupt):
        main(argv, callbacks=[Crash()])
    assert (tmp_path / "checkpoint-2").is_dir() and not (tmp_path / "adapter").exists()
    seen = Steps()
    assert main(argv, callbacks=[seen]) == tmp_path / "adapter"
    assert seen.steps == [3, 4]  # resumed after checkpoint-2, not from scratch
    stamp = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(argv) == tmp_path / "adapter"  # complete: skipped, nothing rewritten
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    # Another recipe is refused while the finished adapter stands; --overwrite moves it aside and trains anew.
    with pytest.raises(TeamsRLError, match=r"another configuration \(learning_rate: 0.0002 -> 0.001\)"):
        main([*argv, "--learning_rate", "1e-3"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    fresh = Steps()
    main([*argv, "--learning_rate", "1e-3", "--overwrite", "true"], callbacks=[fresh])
    assert fresh.steps == [1, 2, 3, 4]  # not resumed from the old recipe's checkpoints: they moved too
    [moved] = (tmp_path / "superseded").iterdir()
    assert (moved / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert (moved / "checkpoint-2").is_dir() and "0.0002" in (moved / "config" / "sft.yaml").read_text()


def test_checkpoints_of_another_recipe_are_not_resumed(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from teams_rl.sft.train import main

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    argv = _args(tiny_model_dir, tmp_path, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    with pytest.raises(KeyboardInterrupt):
        main(argv, callbacks=[Crash()])
    with pytest.raises(TeamsRLError, match="max_steps: 4 -> 3"):
        main([*argv[:-6], "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2"])


def test_accelerate_launch_with_cpu_config(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu.yaml"),
        "-m",
        "teams_rl.sft",
        *_args(tiny_model_dir, tmp_path, "--max_steps", "2"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert "global_batch: 4" in (tmp_path / "README.md").read_text()


# --- recipes and accelerate configs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe", sorted(ROOT.glob("recipes/*/sft/*.yaml")), ids=lambda p: p.parent.parent.name + "/" + p.name
)
def test_every_sft_recipe_parses(recipe):
    from teams_rl.sft.args import parse

    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine unless use_cpu is set.
    (script, training, model, mixture), path = parse(["--config", str(recipe), "--use_cpu", "true"])
    assert path == str(recipe) and model.model_name_or_path and script.dataset_name.endswith("/dataset")
    assert training.completion_only_loss is True
    raw = yaml.safe_load(recipe.read_text())
    assert training.learning_rate == raw["learning_rate"] and model.use_peft == raw["use_peft"]
    if recipe.name == "config_full.yaml":  # the paper's settings
        world = 8
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps * world == 256
        assert (training.learning_rate, training.num_train_epochs, model.use_peft) == (2e-5, 3, False)
    if "qlora" in recipe.name:
        assert model.load_in_4bit and model.bnb_4bit_quant_type == "nf4"


def test_cli_flags_override_the_recipe():
    from teams_rl.sft.args import parse

    (_, training, model, _), _ = parse(["--config", str(RECIPE), "--learning_rate", "3e-5", "--lora_r", "4"])
    assert (training.learning_rate, model.lora_r) == (3e-5, 4)


def test_typo_in_recipe_fails_with_file_and_line(tmp_path):
    from teams_rl.sft.args import parse

    bad = tmp_path / "bad.yaml"
    text = RECIPE.read_text().replace("lora_alpha: 32", "lora_alpah: 32")
    bad.write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("lora_alpah"))) + 1
    with pytest.raises(TeamsRLError) as info:
        parse(["--config", str(bad)])
    assert (info.value.file, info.value.line, info.value.field) == (str(bad), line, "lora_alpah")
    assert "lora_alpha" in str(info.value)  # the suggestion


def test_typo_in_mixture_entry_fails_with_file_and_line(tmp_path):
    from teams_rl.sft.args import parse

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: smollm2-135m\nuse_cpu: true\ndatasets:\n  - path: x.jsonl\n    fracton: 1\n")
    with pytest.raises(TeamsRLError) as info:
        parse(["--config", str(bad)])
    assert (info.value.file, info.value.line, info.value.field) == (str(bad), 3, "datasets[0].fracton")


def _accelerate_keys() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


@pytest.mark.parametrize("name", ["cpu", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = ROOT / "accelerate_configs" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise here
    known = _accelerate_keys()
    for section in (config.deepspeed_config or {}, config.fsdp_config or {}):
        unknown = set(section) - known
        assert not unknown, f"{path}: unknown keys {unknown}"
    expected = {"cpu": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert config.distributed_type.value == expected
    if name == "cpu":
        assert config.use_cpu and config.num_processes == 1
    if name == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]


# --- saved-weights check ---------------------------------------------------------------------------------------------
def test_empty_adapter_is_caught(tmp_path):
    import torch
    from safetensors.torch import save_file

    from teams_rl.sft.weights import verify_weights

    (tmp_path / "adapter_config.json").write_text("{}")
    save_file({}, str(tmp_path / "adapter_model.safetensors"))  # what LoRA under ZeRO-3 saves without gathering
    with pytest.raises(TeamsRLError, match="holds no tensors.*zero3_save_16bit_model"):
        verify_weights(tmp_path)
    save_file(
        {"a.lora_A.weight": torch.zeros(0), "a.lora_B.weight": torch.ones(2, 2)},
        str(tmp_path / "adapter_model.safetensors"),
    )
    with pytest.raises(TeamsRLError, match="1 empty tensors"):
        verify_weights(tmp_path)
    save_file({"a.lora_A.weight": torch.ones(2, 3)}, str(tmp_path / "adapter_model.safetensors"))
    assert verify_weights(tmp_path) == 6
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(TeamsRLError, match="no weights were saved"):
        verify_weights(tmp_path)


# --- user errors -----------------------------------------------------------------------------------------------------
def _load(dataset: str, **columns):
    from teams_rl.sft.args import parse
    from teams_rl.sft.data import Columns, load_mixture

    (script, _, _, mixture), _ = parse(["--config", str(RECIPE), "--dataset_name", dataset, "--test_split_size", "0"])
    return load_mixture(script, mixture, Columns(**columns), seed=0, want_eval=False)


def test_bad_dataset_path_names_file_and_field(tmp_path):
    missing = str(tmp_path / "runs" / "nope" / "dataset")
    with pytest.raises(TeamsRLError) as info:
        _load(missing)
    assert (info.value.file, info.value.field) == (missing, "dataset_name")
    assert "does not exist" in str(info.value)


def test_missing_column_names_file_and_field(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Say hi.", "answer": "Hi."}) + "\n")
    with pytest.raises(TeamsRLError) as info:
        _load(str(rows))
    assert (info.value.file, info.value.field) == (str(rows), "response_column")
    assert "missing column 'response'" in str(info.value) and "answer" in str(info.value)
    train, _, sources = _load(str(rows), response="answer")  # the fix the message suggests works
    assert train[0]["completion"] == [{"role": "assistant", "content": "Hi."}] and sources[0]["rows"] == 1


def test_teams_rl_folder_with_a_broken_row_names_the_line(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    good = {"id": "a", "instruction": "Say hi.", "response": "Hi."}
    (folder / "rows.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "instruction": "x"}) + "\n")
    with pytest.raises(TeamsRLError) as info:
        _load(str(folder))
    assert (info.value.file, info.value.line, info.value.field) == (str(folder / "rows.jsonl"), 2, "response")


def test_cli_exits_2_with_one_line_for_user_errors(tmp_path, capsys):
    from teams_rl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: smollm2-135m\nlearning_rat: 1.0e-4\n")
    assert main(["sft", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2: learning_rat: unknown key") and "\n" not in err
    missing = str(tmp_path / "runs" / "x" / "dataset")
    assert main(["sft", "--config", str(RECIPE), "--dataset_name", missing, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {missing}: dataset_name:") and "\n" not in err


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from teams_rl.sft.train import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # weights saved, trainer_state.json not yet: killed mid-save
    (tmp_path / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step, not by name


def test_the_same_recipe_gives_the_same_adapter(tiny_model_dir, tmp_path):
    """LoRA's init is drawn before TRL's Trainer seeds torch; without a seed first, two runs of one recipe differed."""
    from safetensors.torch import load_file

    from teams_rl.sft.train import main

    weights = []
    for name in ("a", "b"):
        main(_args(tiny_model_dir, tmp_path / name, "--max_steps", "1"))
        weights.append(load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
