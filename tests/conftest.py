"""Shared fixtures: CPU speed settings, the embedded model's tokenizer, a tiny random Llama, scripted backends."""

import os

# Before torch is imported: spinning OpenMP threads make small matmuls ~5x slower on 2-core machines.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a plain folder (converted once into the user cache, ~20 s)."""
    from teams_rl.core.refs import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir, tmp_path_factory) -> str:
    """A ~3 M-parameter random Llama with SmolLM2's real tokenizer and chat template: fast, outputs are noise."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def backend(monkeypatch):
    """The scripted LLMs (tests/scripted.py) answer every role, for synthesis tests that need no model."""
    from teams_rl.llm.factory import BackendPool
    from tests.scripted import make_backend

    scripted = make_backend()
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: scripted)
    return scripted
