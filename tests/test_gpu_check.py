"""bench/gpu_check.py's pure parts, with no GPU and no network: the FLOP and MFU arithmetic on known numbers, the
8B shape's parameter count on the meta device, the LoRA count against peft, the wheel-set check, the command line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gc_mod():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    return gpu_check


def test_flops_per_token_on_the_8b_shape(gc_mod):
    shape = gc_mod.shape_config("llama-8b")
    n = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096
    assert gc_mod.matmul_params(shape) == n == 7_504_658_432
    assert gc_mod.lora_params(shape) == 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * 18432) == 41_943_040
    a = 32 * 2 * 2048 * 4096  # causal: half of the 4 x seq x d of the full score matrix
    assert gc_mod.attention_flops(shape, 2048) == a == 536_870_912
    f = gc_mod.flops_per_token(shape, 2048)
    assert f["model"] == 4 * n + 3 * a + 6 * 41_943_040 == 31_880_904_704
    assert f["hardware"] == f["model"] + 2 * n + a + 2 * 41_943_040  # checkpointing + the chunked loss's head
    assert f["full_ft"] == 6 * n + 3 * a
    plain = gc_mod.flops_per_token(shape, 2048, checkpointing=False, chunked_head=False)
    assert plain["hardware"] == plain["model"] == f["model"]
    assert f["model"] / f["full_ft"] == pytest.approx(0.684, abs=1e-3)  # 6N overstates LoRA by ~1.5x


def test_mfu_arithmetic(gc_mod):
    # 10,000 tokens/s x 31.88 GFLOP = 318.8 TFLOP/s, 32.2% of 989.4
    assert gc_mod.utilization(10_000, 31.88e9, 989.4) == pytest.approx(0.32221, abs=1e-5)
    need = gc_mod.tokens_per_s_for(0.40, 31.88e9, 989.4)
    assert need == pytest.approx(12_414, abs=1)
    assert gc_mod.utilization(need, 31.88e9, 989.4) == pytest.approx(0.40)


def test_parameter_counts_formula_and_meta_device(gc_mod):
    eight = gc_mod.shape_config("llama-8b")
    assert gc_mod.param_count(eight) == 8_030_261_248  # Llama-3.1-8B
    assert gc_mod.param_count(gc_mod.shape_config("smollm2-135m")) == 134_515_008  # SmolLM2-135M, tied
    built = gc_mod.meta_param_count(eight)
    assert built == gc_mod.param_count(eight)
    assert abs(built - 8.03e9) / 8.03e9 < 0.01


def test_lora_count_matches_peft_on_the_tiny_shape(gc_mod):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = gc_mod.shape_config("smollm2-135m", tiny=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(gc_mod.LORA_TARGETS)))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == gc_mod.lora_params(shape)


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)


def test_wheel_check(gc_mod, tmp_path):
    manifest = tmp_path / "wheels.txt"
    manifest.write_text("# comment\nalpha==1.0   # needs beta\nbeta_pkg==2.0\n")
    assert gc_mod.read_manifest(manifest) == {"alpha": "1.0", "beta-pkg": "2.0"}
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    _fake_wheel(
        tmp_path, "alpha", "1.0", ["beta-pkg>=2", "torch", 'colorama; sys_platform == "win32"', 'x; extra == "dev"']
    )
    _fake_wheel(tmp_path, "beta_pkg", "2.0", [])
    lines, problems = gc_mod.check_wheels(tmp_path, manifest)
    assert problems == [] and "beta-pkg (carried), torch" in lines[0]

    _fake_wheel(tmp_path, "beta_pkg", "1.0", ["not-on-the-image"])  # a second version, and an unmet requirement
    _, problems = gc_mod.check_wheels(tmp_path, manifest)
    assert any("beta-pkg==2.0: found" in p for p in problems)
    assert any("not-on-the-image" in p for p in problems)


def test_manifest_carries_the_projects_trl_pin(gc_mod):
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    trl = next(Requirement(p) for p in pins if p.startswith("trl"))
    carried = gc_mod.read_manifest()
    assert trl.specifier.contains(Version(carried["trl"]))
    assert {"trl", "datasets", "deepspeed", "datatrove"} <= carried.keys()
    assert not carried.keys() & {gc_mod.normalize(p) for p in ("torch", "transformers", "peft", "accelerate")}


def test_command_line(gc_mod, capsys):
    parser = gc_mod.build_parser()
    args = parser.parse_args(["run", "--dry-run", "--parts", "matmul, sft-8b", "--budget-s", "60"])
    assert (args.dry_run, args.parts, args.budget_s) == (True, ["matmul", "sft-8b"], 60.0)
    assert parser.parse_args(["zero2-child", "--json", "x.json", "--", "--max_steps", "2"]).sft_args[-2:] == [
        "--max_steps",
        "2",
    ]
    assert gc_mod.main(["--list"]) == 0  # the command defaults to run
    listed = capsys.readouterr().out
    assert all(p.name in listed for p in gc_mod.PARTS) and "extra" in listed
    with pytest.raises(SystemExit, match="unknown parts: nope"):
        gc_mod.main(["run", "--parts", "matmul,nope"])


def test_table_reports_failures_and_skips(gc_mod):
    rows = [
        {"part": "sft-8b", "status": "ok", "elapsed_s": 20.0, "step_s": 0.8, "tokens_per_s": 10240.0, "mfu": 0.33,
         "hfu": 0.49, "note": "batch 4"},
        {"part": "zero2", "status": "failed", "elapsed_s": 3.0, "error": "ModuleNotFoundError: deepspeed"},
        {"part": "ppo", "status": "skipped", "note": "over budget"},
    ]  # fmt: skip
    text = gc_mod.table(rows)
    assert "10,240" in text and "33.0%" in text and "ModuleNotFoundError: deepspeed" in text and "over budget" in text
