"""GPU check (issue 13): what the pipeline's heavy parts cost on one GPU, measured in one budgeted run.

Parts, in the order they run (``--list`` prints them with their budget estimates):

- ``matmul``: an 8192^3 bf16 matrix product, the ceiling the MFU figures are read against;
- ``gen-8b`` / ``gen-135m``: batched generation through the project's ``TransformersBackend`` (its per-row seeded
  sampler), beside transformers' own batched ``generate`` on the same prompts;
- ``sft-8b`` / ``sft-135m``: LoRA SFT with TRL's ``SFTTrainer`` + peft (the 8B recipe's settings: r 16 on the seven
  projections, bf16, sequence 2048, gradient checkpointing): tokens/s, MFU and HFU (``flops_per_token`` says how);
- ``ppo`` / ``grpo``: optimizer steps of the project's own policy trainers (``teams_rl.policy.train.main`` on the
  smollm2-135m recipes), with the rewriter and reviewer scripted so that only the trainer is timed;
- ``zero2``: the project's SFT stage under ``accelerate launch`` with ``accelerate_configs/deepspeed_zero2.yaml``;
- extras, last, so that they run only with time left: ``sft-8b-nogc`` (``sft-8b`` without gradient
  checkpointing: what the recomputation costs) and ``sft-8b-bs8`` (batch 8 instead of the recipe's 4).

Every model is a Llama built from a config with random weights: Llama-3.1-8B's shape and SmolLM2-135M's (the real
weights cannot travel), with SmolLM2's real tokenizer. ``--dry-run`` runs every part at tiny sizes on the CPU (2
layers, hidden 64, sequence 64), so that the GPU run does not fail on a typo. Each part is guarded: a failure is a
row of the table and the others still run; a part whose estimate no longer fits the budget is skipped.

    bench/gpu_check.sh --dry-run             # here: the wheels, the arithmetic, every part at tiny sizes
    bench/gpu_check.sh                       # on the GPU machine (installs .whl/ first)
    python bench/gpu_check.py shapes         # parameter counts (meta device) and FLOPs per token
    python bench/gpu_check.py run --parts matmul,sft-8b --budget-s 120
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.parser
import gc
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

MANIFEST = ROOT / "bench" / "gpu" / "wheels.txt"
WHEEL_DIR = ROOT / ".whl"
TOKENIZER_DIR = WHEEL_DIR / "tokenizer"  # SmolLM2's tokenizer, exported by `fetch` (3.4 MB, travels with the wheels)
RESULTS_DIR = ROOT / "bench" / "results"
GPU_PYTHON = "3.12"  # KINDS.md: python3 there is 3.12.3
GPU_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

# H100/H200 SXM dense bf16 peak by the datasheet (H200.md: "about 990"); KINDS.md measured 769-798 TFLOP/s on an
# 8192^3 product here, which the `matmul` part measures again.
PEAK_TFLOPS = 989.4
MFU_GOAL = 0.40

# Llama-3.1-8B's and SmolLM2-135M's shapes (rope and norm settings do not change the cost and are left default).
SHAPES: dict[str, dict] = {
    "llama-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
    },
    "smollm2-135m": {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
}
# --dry-run: the same vocabulary and tying, everything else tiny.
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_INTERMEDIATE = 128

# The 8B SFT recipe's LoRA (recipes/llama-3.1-8b/sft/config_lora.yaml).
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.05
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Python packages on the `nvidia-h200` image (/work/.library/device/KINDS.md, "Python packages already there", read
# there on 2026-11-17). A carried wheel's requirement must be one of these or another carried wheel.
_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
"""
GPU_IMAGE_PACKAGES = frozenset(_IMAGE_PACKAGES.split())
MAX_WHEELS_MB = 40.0  # the whole tree that travels is capped at 64 MiB


# ----------------------------------------------------------------------------------------------------------------
# Shapes, parameters and FLOPs: pure arithmetic on a config dict
# ----------------------------------------------------------------------------------------------------------------
def shape_config(name: str, tiny: bool = False) -> dict:
    """The LlamaConfig keyword arguments of a named shape (``tiny``: the dry-run's 2-layer version of it)."""
    shape = dict(SHAPES[name])
    if tiny:
        shape.update(TINY, intermediate_size=TINY_INTERMEDIATE, max_position_embeddings=2048)
    return shape


def head_dim(shape: dict) -> int:
    return shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"]


def layer_linear_params(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    q, kv = shape["num_attention_heads"] * head_dim(shape), shape["num_key_value_heads"] * head_dim(shape)
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def param_count(shape: dict) -> int:
    """All parameters of a LlamaForCausalLM of this shape (embeddings once when tied; RMSNorm weights; no biases)."""
    h, v, n_layers = shape["hidden_size"], shape["vocab_size"], shape["num_hidden_layers"]
    per_layer = sum(a * b for a, b in layer_linear_params(shape).values()) + 2 * h
    return v * h * (1 if shape["tie_word_embeddings"] else 2) + n_layers * per_layer + h


def matmul_params(shape: dict) -> int:
    """Weights that a token is multiplied by: every decoder linear layer plus the output head (the embedding
    lookup is a gather, not a matmul; a tied head is still one vocab x hidden product)."""
    per_layer = sum(a * b for a, b in layer_linear_params(shape).values())
    return shape["num_hidden_layers"] * per_layer + shape["vocab_size"] * shape["hidden_size"]


def lora_params(shape: dict, r: int = LORA_R, targets=LORA_TARGETS) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted linear layer."""
    layers = layer_linear_params(shape)
    return shape["num_hidden_layers"] * sum(r * (layers[t][0] + layers[t][1]) for t in targets)


def attention_flops(shape: dict, seq: int) -> int:
    """Forward attention FLOPs per token (QK^T and PV) under a causal mask: a query sees seq/2 keys on average,
    2 FLOPs per multiply-add, so 2 x seq x (heads x head_dim) per layer. Flash/SDPA kernels skip the masked half;
    PaLM's and Megatron's MFU count the full square (twice this)."""
    return shape["num_hidden_layers"] * 2 * seq * shape["num_attention_heads"] * head_dim(shape)


def flops_per_token(
    shape: dict, seq: int, *, r: int = LORA_R, checkpointing: bool = True, chunked_head: bool = True
) -> dict[str, float]:
    """FLOPs per trained token of LoRA SFT, with N = ``matmul_params``, A = ``attention_flops``, N_l = LoRA params.

    - ``model`` (MFU's numerator, no recomputation counted): forward 2N + A + 2N_l; backward 2N + 2A + 4N_l. The
      base weights are frozen, so the backward computes input gradients only (2N), not weight gradients (another
      2N in a full fine-tune); attention has no weights, so its backward is the full 2A; LoRA gets both (4N_l).
      Total 4N + 3A + 6N_l: not the 6N of full training, which overstates a LoRA run by about 1.5x.
    - ``hardware`` (HFU's numerator): what the GPU really executes besides: gradient checkpointing runs each decoder
      layer's forward again in the backward (2N_layers + A + 2N_l), and TRL 1.12's default chunked_nll loss
      recomputes the output head in its backward too (2N_head).
    - ``full_ft``: 6N + 3A, what a full fine-tune of the same shape counts, for comparison only.
    """
    n, a, nl = matmul_params(shape), attention_flops(shape, seq), lora_params(shape, r)
    head = shape["vocab_size"] * shape["hidden_size"]
    forward = 2 * n + a + 2 * nl
    backward = 2 * n + 2 * a + 4 * nl
    recompute = (2 * (n - head) + a + 2 * nl if checkpointing else 0) + (2 * head if chunked_head else 0)
    return {
        "matmul_params": n,
        "lora_params": nl,
        "attention_forward": a,
        "forward": forward,
        "backward": backward,
        "model": forward + backward,
        "recompute": recompute,
        "hardware": forward + backward + recompute,
        "full_ft": 6 * n + 3 * a,
    }


def utilization(tokens_per_s: float, flops: float, peak_tflops: float = PEAK_TFLOPS) -> float:
    """Achieved FLOP rate over the peak: tokens/s x FLOPs per token / (peak TFLOP/s x 1e12)."""
    return tokens_per_s * flops / (peak_tflops * 1e12)


def tokens_per_s_for(mfu: float, flops: float, peak_tflops: float = PEAK_TFLOPS) -> float:
    """The training throughput at which ``utilization`` reaches ``mfu``."""
    return mfu * peak_tflops * 1e12 / flops


def meta_param_count(shape: dict) -> int:
    """Parameters of the real transformers model of this shape, built on the meta device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
    return sum(p.numel() for p in model.parameters())


def shapes_report(seq: int = 2048, peak_tflops: float = PEAK_TFLOPS, meta: bool = True) -> tuple[str, dict]:
    """Text and data of the arithmetic: parameters (formula and meta-device model), FLOPs per token, MFU goal."""
    lines, data = [], {}
    for name in SHAPES:
        shape = shape_config(name)
        f = flops_per_token(shape, seq)
        built = meta_param_count(shape) if meta else None
        data[name] = {"params": param_count(shape), "params_meta": built, "seq": seq, **f}
        need = tokens_per_s_for(MFU_GOAL, f["model"], peak_tflops)
        lines += [
            f"{name}: {param_count(shape):,} params by the formula"
            + (f", {built:,} in the model built on the meta device" if built is not None else "")
            + f"; N = {f['matmul_params'] / 1e9:.3f}B in matmuls, LoRA r{LORA_R} {f['lora_params'] / 1e6:.1f}M, "
            f"attention {f['attention_forward'] / 1e9:.3f} GFLOP/token forward at seq {seq}",
            f"  per token: model 4N+3A+6N_l = {f['model'] / 1e9:.2f} GFLOP, hardware (+checkpointing, +chunked "
            f"head) {f['hardware'] / 1e9:.2f}, full fine-tune 6N+3A {f['full_ft'] / 1e9:.2f}; "
            f"{MFU_GOAL:.0%} MFU of {peak_tflops:.0f} TFLOP/s = {need:,.0f} tokens/s",
        ]
    return "\n".join(lines), data


# ----------------------------------------------------------------------------------------------------------------
# The wheels carried to the GPU machine
# ----------------------------------------------------------------------------------------------------------------
def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """``{normalized name: version}`` of ``bench/gpu/wheels.txt``."""
    out = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalize(name)] = version.strip()
    return out


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def wheel_requirements(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    return message.get_all("Requires-Dist") or []


def check_wheels(folder: Path = WHEEL_DIR, manifest: Path = MANIFEST) -> tuple[list[str], list[str]]:
    """(report lines, problems): every manifest entry present in one version, nothing else, every requirement met
    by a carried wheel or by the GPU image's packages (markers evaluated for Python 3.12 on Linux), size cap."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    wanted = read_manifest(manifest)
    wheels = sorted(folder.glob("*.whl"))
    have: dict[str, list[tuple[str, Path]]] = {}
    for w in wheels:
        name, version = wheel_name_version(w)
        have.setdefault(name, []).append((version, w))
    problems = []
    for name, version in wanted.items():
        found = [v for v, _ in have.get(name, [])]
        if found != [version]:
            problems.append(f"{name}=={version}: found {found or 'nothing'} in {folder}")
    problems += [f"{name}: not in {manifest.name}" for name in have if name not in wanted]
    env = {"python_version": GPU_PYTHON, "python_full_version": GPU_PYTHON + ".3", "sys_platform": "linux"}
    env |= {"platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    env |= {"implementation_name": "cpython", "platform_python_implementation": "CPython"}
    image = {normalize(p) for p in GPU_IMAGE_PACKAGES}
    lines = []
    for name, entries in sorted(have.items()):
        for _, w in entries:
            needs = []
            for line in wheel_requirements(w):
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                dep = normalize(req.name)
                if dep in have:
                    if not req.specifier.contains(Version(have[dep][0][0]), prereleases=True):
                        problems.append(f"{name} needs {req}, carried {dep} {have[dep][0][0]}")
                    needs.append(f"{dep} (carried)")
                elif dep in image:
                    needs.append(dep)
                else:
                    problems.append(f"{name} needs {req}: neither carried nor on the GPU image")
            lines.append(f"  {w.name:<72} {w.stat().st_size / 2**20:6.2f} MiB  needs: {', '.join(needs) or '-'}")
    total = sum(w.stat().st_size for w in wheels) + sum(
        f.stat().st_size for f in (folder / "tokenizer").glob("*") if f.is_file()
    )
    if not (folder / "tokenizer" / "tokenizer.json").is_file():
        problems.append(f"{folder / 'tokenizer'}: SmolLM2's tokenizer is missing (bench/gpu_check.sh --fetch)")
    lines.append(f"  {len(wheels)} wheels + tokenizer/: {total / 2**20:.1f} MiB (cap {MAX_WHEELS_MB:.0f} MiB)")
    if total / 2**20 > MAX_WHEELS_MB:
        problems.append(f"{folder}: {total / 2**20:.1f} MiB is over {MAX_WHEELS_MB:.0f} MiB")
    return lines, problems


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(folder: Path = WHEEL_DIR, manifest: Path = MANIFEST) -> None:
    """Download the manifest's wheels for the GPU machine's Python (3.12, manylinux x86-64) into ``folder``; build
    those the registry has no wheel of (deepspeed: sdist only) from their sdist; export SmolLM2's tokenizer. Wheels
    of other versions are removed, so that the folder keeps one version of each."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = read_manifest(manifest)
    for w in folder.glob("*.whl"):
        name, version = wheel_name_version(w)
        if wanted.get(name) != version:
            print(f"removing {w.name} (not in {manifest.name})")
            w.unlink()
    have = {wheel_name_version(w)[0] for w in folder.glob("*.whl")}
    platform = [x for p in GPU_PLATFORMS for x in ("--platform", p)]
    for name, version in wanted.items():
        if name in have:
            continue
        spec = f"{name}=={version}"
        got = _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", GPU_PYTHON,
                   "--implementation", "cp", *platform, "-d", str(folder), spec)  # fmt: skip
        if got.returncode == 0:
            print(f"downloaded {spec}")
            continue
        print(f"{spec}: no wheel on the registry; building one from the sdist")
        with tempfile.TemporaryDirectory() as tmp:
            sdist = _pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", tmp, spec)
            if sdist.returncode != 0:
                raise SystemExit(f"cannot download {spec}:\n{got.stderr[-2000:]}\n{sdist.stderr[-2000:]}")
            # the build imports torch (deepspeed's setup.py does): use this environment's, not an isolated one
            built = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(folder),
                         *map(str, Path(tmp).iterdir()))  # fmt: skip
            if built.returncode != 0:
                raise SystemExit(f"cannot build {spec}:\n{built.stderr[-3000:]}")
        print(f"built {spec}")
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        from teams_rl.core.refs import resolve_model

        AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")).save_pretrained(tokenizer)
        print(f"exported SmolLM2's tokenizer to {tokenizer}")


# ----------------------------------------------------------------------------------------------------------------
# The run: context, timing, parts
# ----------------------------------------------------------------------------------------------------------------
class Context:
    """What the parts share: device, dtype, sizes (dry or real), the tokenizer, built models and saved folders."""

    def __init__(self, dry: bool, work: Path, tokenizer_dir: Path, peak_tflops: float):
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # shard writing and weight loading bars between the parts' lines
        with contextlib.suppress(ImportError):
            from datasets.utils.logging import disable_progress_bar

            disable_progress_bar()  # TRL's dataset preparation maps
        self.dry, self.work, self.tokenizer_dir, self.peak = dry, work, tokenizer_dir, peak_tflops
        self.cuda = torch.cuda.is_available() and not dry
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16
        self.dtype_name = "bfloat16"
        self.ceiling_tflops: float | None = None
        self._models: dict = {}
        self._dirs: dict[str, Path] = {}

    def shape(self, name: str) -> dict:
        return shape_config(name, tiny=self.dry)

    def size(self, gpu, dry):
        return dry if self.dry else gpu

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def tokenizer(self, padding_side: str = "left"):
        from transformers import AutoTokenizer

        if not (self.tokenizer_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{self.tokenizer_dir}: no tokenizer (run bench/gpu_check.sh --fetch here)")
        tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        tok.padding_side = padding_side
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def build(self, name: str):
        """A random-weight Llama of the named shape, built directly on the device in bf16."""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        tok = self.tokenizer()
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        config = LlamaConfig(**self.shape(name), **ids)
        torch.manual_seed(0)
        with torch.device(self.device):
            return AutoModelForCausalLM.from_config(config, dtype=self.dtype, attn_implementation="sdpa")

    def model(self, name: str):
        """The shared model of a shape (built once; for parts that leave it unchanged)."""
        if name not in self._models:
            self._models[name] = self.build(name)
        return self._models[name]

    def take_model(self, name: str):
        """The shared model, handed over for good (a part that wraps it in LoRA), or a fresh one."""
        model = self._models.pop(name, None)
        return model if model is not None else self.build(name)

    def model_dir(self, name: str) -> Path:
        """A saved folder (weights and tokenizer) of the shape, for the parts that load models by path."""
        if name not in self._dirs:
            folder = self.work / f"model-{name}"
            model = self.build(name)
            model.save_pretrained(folder)
            self.tokenizer().save_pretrained(folder)
            del model
            self.free()
            self._dirs[name] = folder
        return self._dirs[name]

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()


def step_timer(sync: Callable[[], None]):
    """A TrainerCallback recording the wall time of each optimizer step: from the previous step's end (the first
    from train begin), the device synchronized at each mark, so all of a step (data, generation, reward, forward,
    backward, optimizer, logging) is in it. PPO 1.12 calls only on_step_end, so the marks are step ends. It also
    keeps the logged losses and, at the first step, how accelerate runs the model (``engine``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []
            self.losses: list[float] = []
            self.engine: dict = {}
            self._mark = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            self.steps.append(now - self._mark)
            self._mark = now
            if not self.engine:
                self.engine = _engine_facts(kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def _engine_facts(kwargs: dict) -> dict:
    """How accelerate runs the model (read at the first step end): distributed type, ZeRO stage, optimizer."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState()
    plugin = getattr(state, "deepspeed_plugin", None)
    optimizer = kwargs.get("optimizer")
    inner = getattr(optimizer, "optimizer", None)
    return {
        "distributed_type": str(state.distributed_type),
        "zero_stage": getattr(plugin, "zero_stage", None),
        "optimizer": type(optimizer).__name__,
        "inner_optimizer": type(inner).__name__ if inner is not None else None,
        "mixed_precision": str(state.mixed_precision),
    }


def _timed_steps(timer, warmup: int) -> dict:
    steps = timer.steps
    kept = steps[warmup:] or steps
    return {"steps": len(steps), "first_step_s": steps[0] if steps else None, "step_s": statistics.median(kept)}


def _peak_gib(ctx: Context) -> float | None:
    if not ctx.cuda:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def part_matmul(ctx: Context) -> dict:
    import torch

    n, iters = ctx.size((8192, 20), (256, 3))
    a, b = (torch.randn(n, n, device=ctx.device, dtype=ctx.dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    ctx.sync()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    ctx.sync()
    seconds = (time.perf_counter() - start) / iters
    tflops = 2 * n**3 / seconds / 1e12
    if ctx.cuda:
        ctx.ceiling_tflops = tflops
    return {
        "n": n,
        "ms": seconds * 1e3,
        "tflops": tflops,
        "note": f"{n}^3 bf16: {tflops:.1f} TFLOP/s = {tflops / ctx.peak:.0%} of the {ctx.peak:.0f} datasheet peak",
    }


def _requests(n: int, new_tokens: int):
    from teams_rl.llm.base import GenerationRequest, SamplingParams

    sampling = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=new_tokens)  # the rewriter's settings
    topics = ["photosynthesis", "binary search", "the French revolution", "compound interest", "tides", "recursion"]
    return [
        GenerationRequest(
            messages=(
                {"role": "system", "content": "You rewrite instructions so that they are harder to answer."},
                {
                    "role": "user",
                    "content": f"Rewrite this instruction to ask for more depth, adding one constraint.\n\n"
                    f"#Instruction#: Explain {topics[i % len(topics)]} to a student, with example {i}.",
                },
            ),
            sampling=sampling,
            seed=i,
        )
        for i in range(n)
    ]


def part_gen(ctx: Context, name: str) -> dict:
    """Batched generation through TransformersBackend: the 135M shape is loaded from a saved folder like any model;
    the 8B one (16 GB) is built in memory and handed to the backend's ``load`` through its two loader functions
    rather than written out and read back, so the backend's own load and generate paths run in both."""
    import torch

    from teams_rl.llm import transformers_backend as tb

    batch, new = ctx.size((64, 128), (4, 4))
    start = time.perf_counter()
    if name == "smollm2-135m":
        backend = tb.TransformersBackend(
            str(ctx.model_dir(name)), dtype=ctx.dtype_name, batch_size=batch, device=ctx.device
        )
        model, tokenizer = backend.load()
    else:
        built, left = ctx.model(name), ctx.tokenizer()
        backend = tb.TransformersBackend(f"random-{name}", dtype=ctx.dtype_name, batch_size=batch, device=ctx.device)
        with _patched(tb, load_causal_lm=lambda *a, **k: built, load_tokenizer=lambda *a, **k: left):
            model, tokenizer = backend.load()
    load_s = time.perf_counter() - start
    requests = _requests(batch, new)
    backend.generate(_requests(batch, 2))  # warm-up: kernels, allocator, the sampler's generators
    ctx.sync()
    start = time.perf_counter()
    results = backend.generate(requests)
    ctx.sync()
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)

    # transformers' own batched sampling on the same prompts, every row held to `new` tokens
    rows = [
        list(tokenizer.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=True)["input_ids"])
        for r in requests
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=ctx.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=ctx.device)
    sample = {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, **sample)
        ctx.sync()
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **sample)
        ctx.sync()
    raw_seconds = time.perf_counter() - start
    raw_tokens = (out.shape[1] - width) * batch
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    read_tbps = weights_bytes * new / seconds / 1e12  # each decoding step reads every weight once
    del backend, model
    return {
        "batch": batch,
        "new_tokens": new,
        "prompt_tokens": statistics.mean(map(len, rows)),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "raw_tokens_per_s": raw_tokens / raw_seconds,
        "load_s": load_s,
        "weight_read_tb_per_s": read_tbps,
        "note": f"backend {tokens / seconds:,.0f} tok/s vs transformers' generate {raw_tokens / raw_seconds:,.0f}; "
        f"batch {batch} x {new} new; weights read at {read_tbps:.2f} TB/s (4.8 peak)" + f"; load {load_s:.1f} s",
    }


@contextlib.contextmanager
def _patched(module, **names):
    """Set attributes of ``module`` for the duration of the block."""
    saved = {k: getattr(module, k) for k in names}
    for k, v in names.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def sft_config(ctx: Context, out: Path, *, steps: int, batch: int, seq: int, checkpointing: bool):
    """TRL's SFTConfig for the measurement, the 8B recipe's training keys where they matter."""
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    kwargs = {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1.0,
        "max_length": seq,
        "packing": False,
        "bf16": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": not ctx.cuda,
        "dataloader_pin_memory": ctx.cuda,
        "gradient_checkpointing": checkpointing,  # TRL's default is True
    }
    if "activation_checkpointing" in names:  # transformers >= 5.2x renamed it; the old name stays an alias
        kwargs["activation_checkpointing"] = checkpointing
    return SFTConfig(**kwargs)


def part_sft(ctx: Context, name: str, *, batch: int, checkpointing: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    seq = ctx.size(2048, 64)
    warmup, steps = ctx.size((2, 8), (1, 2))
    batch = ctx.size(batch, 2)
    tokenizer = ctx.tokenizer(padding_side="right")
    model = ctx.take_model(name)
    rows = torch.randint(
        0, len(tokenizer), (batch * (warmup + steps), seq), generator=torch.Generator().manual_seed(0)
    )
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})  # pre-tokenized, every row exactly seq tokens
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    timer = step_timer(ctx.sync)
    out = ctx.work / f"sft-{name}"
    config = sft_config(ctx, out, steps=warmup + steps, batch=batch, seq=seq, checkpointing=checkpointing)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[timer],
    )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    facts = {  # read after training: the Trainer turns checkpointing on when train() starts
        "trainable_params": trainable,
        "gradient_checkpointing": bool(
            getattr(base, "is_activation_checkpointing", None) or getattr(base, "is_gradient_checkpointing", None)
        ),
        "attn_implementation": base.config._attn_implementation,
        "loss_type": getattr(config, "loss_type", None),
    }
    timing = _timed_steps(timer, warmup)
    shape = ctx.shape(name)
    f = flops_per_token(shape, seq, checkpointing=checkpointing, chunked_head=facts["loss_type"] == "chunked_nll")
    tokens_per_s = batch * seq / timing["step_s"]
    mfu, hfu = utilization(tokens_per_s, f["model"], ctx.peak), utilization(tokens_per_s, f["hardware"], ctx.peak)
    expected = lora_params(shape)
    if trainable != expected:
        raise AssertionError(f"{trainable} trainable parameters, the LoRA formula says {expected}")
    del trainer, model
    note = (
        f"batch {batch} x seq {seq}, LoRA r{LORA_R} on 7 projections, "
        f"{'checkpointing' if facts['gradient_checkpointing'] else 'no checkpointing'}, "
        f"{facts['attn_implementation']}, loss {facts['loss_type']}; "
        f"{f['model'] / 1e9:.2f} GFLOP/token model, {f['hardware'] / 1e9:.2f} hardware"
    )
    if ctx.ceiling_tflops:
        note += f"; {tokens_per_s * f['model'] / 1e12 / ctx.ceiling_tflops:.0%} of the measured matmul ceiling"
    return {
        **timing,
        "batch": batch,
        "seq": seq,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "hfu": hfu,
        "mfu_goal_met": mfu >= MFU_GOAL,
        "losses": timer.losses,
        "flops_per_token": f,
        **facts,
        "note": note,
    }


def _scripted_llms():
    """The rewriter and reviewer as a scripted backend: rewrites long enough to pass the length screen, and P(Yes)
    that varies with the request, so GRPO's groups have different rewards (their advantages are not all zero)."""
    import hashlib

    from teams_rl.llm.scripted import ScriptedBackend

    def reply(request) -> str:
        tail = request.messages[-1]["content"][-160:].replace("\n", " ")
        return f"Describe, step by step and with two worked examples, the following task in more depth: {tail}"

    def scorer(request) -> list[float]:
        digest = hashlib.sha256(request.messages[-1]["content"].encode()).digest()
        p = 0.1 + 0.8 * digest[0] / 255
        return [math.log(p), math.log(1 - p)]

    return ScriptedBackend(reply, scorer, model_id="scripted")


def part_policy(ctx: Context, algorithm: str) -> dict:
    """Optimizer steps of the project's PPO or GRPO trainer on the smollm2-135m recipe, instructor = the random
    135M-shaped model, rewriter and reviewer scripted; embedding screens off (no MiniLM on the GPU machine)."""
    import importlib

    from teams_rl.llm.factory import BackendPool
    from teams_rl.policy import train as policy_train

    module = importlib.import_module(f"teams_rl.policy.{algorithm}")
    steps, batch = ctx.size(3, 2), 8
    # PPO keeps its recipe's float32: under bfloat16 the value model's score head gets float32 hidden states from
    # its LoRA layers and the first value forward fails ("Float and BFloat16"); GRPO runs in bfloat16.
    dtype = "float32" if algorithm == "ppo" else ctx.dtype_name
    argv = [
        "--config", str(ROOT / "recipes" / "smollm2-135m" / "policy" / f"config_{algorithm}.yaml"),
        "--output_dir", str(ctx.work / f"policy-{algorithm}"),
        "--model_name_or_path", str(ctx.model_dir("smollm2-135m")),
        "--dtype", dtype,
        "--reviewer_modes", "judge_logprob:1",
        "--screen_min_similarity", "0", "--screen_breadth_min_similarity", "0", "--screen_min_relevance", "0",
        "--screen_min_novelty", "0",
        "--per_device_train_batch_size", str(batch),
        "--probe_states", "2",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    if algorithm == "ppo":
        argv += ["--total_episodes", str(steps * batch), "--local_rollout_forward_batch_size", str(batch)]
    else:
        argv += ["--max_steps", str(steps), "--bf16", "true"]
    if not ctx.cuda:
        argv += ["--use_cpu", "true"]
    scripted, timer = _scripted_llms(), step_timer(ctx.sync)
    original_train = module.train_within_budget

    def timed(trainer, *args, **kwargs):
        trainer.add_callback(timer)
        return original_train(trainer, *args, **kwargs)

    with (
        _patched(BackendPool, get=lambda self, settings, role: scripted),
        _patched(module, train_within_budget=timed),
    ):
        folder = policy_train.main(argv)
    timing = _timed_steps(timer, 1)
    return {
        **timing,
        "answers_per_step": batch,
        "rewrites": scripted.generate_calls,
        "reviews": scripted.score_calls,
        "policy_dir": str(folder),
        "dtype": dtype,
        "note": f"teams_rl.policy ({algorithm}, trl 1.12, {dtype}) on the smollm2-135m recipe: {batch} answers/step, "
        f"first step {timing['first_step_s']:.2f} s; rewriter/reviewer scripted ({scripted.generate_calls} "
        f"rewrites, {scripted.score_calls} reviews)",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_zero2(ctx: Context, budget_left: float) -> dict:
    """The project's SFT stage (smollm2-135m LoRA recipe, the random 135M shape, the test fixture's rows) under
    ``accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 1``; the child
    (``zero2-child``) times the steps and reads the ZeRO stage of the engine that really ran."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ModuleNotFoundError("deepspeed is not installed (the .whl/ folder carries it)")
    steps = ctx.size(4, 2)
    out, facts, log = ctx.work / "zero2", ctx.work / "zero2.json", ctx.work / "zero2.log"
    sft = [
        "--config", str(ROOT / "recipes" / "smollm2-135m" / "sft" / "config_lora.yaml"),
        "--model_name_or_path", str(ctx.model_dir("smollm2-135m")),
        "--dataset_name", str(ROOT / "tests" / "fixtures" / "sft_dataset"),
        "--output_dir", str(out),
        "--max_steps", str(steps), "--gradient_accumulation_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(ROOT / "accelerate_configs" / "deepspeed_zero2.yaml")]
    launch += ["--num_processes", "1", "--main_process_port", str(_free_port())]
    if ctx.cuda:
        sft += ["--dtype", "bfloat16", "--bf16", "true"]
    else:  # DeepSpeed's CPU accelerator (gloo), fp32; accelerate's --cpu would bypass DeepSpeed altogether
        launch += ["--mixed_precision", "no"]
        sft += ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true"]
    cmd = [*launch, str(Path(__file__).resolve()), "zero2-child", "--json", str(facts), "--", *sft]
    start = time.perf_counter()
    with log.open("w") as sink:
        # its own session, so that a timeout or an interrupt ends the launcher and the rank it started together
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=None if math.isinf(budget_left) else max(budget_left, 60))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    wall = time.perf_counter() - start
    if returncode != 0 or not facts.is_file():
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(f"    | {line}" for line in tail))
        raise RuntimeError(f"accelerate launch exited {returncode} (log above, and {log})")
    child = json.loads(facts.read_text())
    engine = child["engine"]
    if engine.get("zero_stage") != 2 or "DEEPSPEED" not in engine.get("distributed_type", ""):
        raise AssertionError(f"the run was not ZeRO-2 under DeepSpeed: {engine}")
    steps_s = child["steps"]
    step_s = statistics.median(steps_s[1:] or steps_s)
    return {
        "steps": len(steps_s),
        "first_step_s": steps_s[0],
        "step_s": step_s,
        "process_wall_s": wall,
        "engine": engine,
        "losses": child["losses"],
        "note": f"teams_rl.sft under accelerate launch + DeepSpeed ZeRO-{engine['zero_stage']} "
        f"({engine['inner_optimizer'] or engine['optimizer']}); first step {steps_s[0]:.2f} s, process {wall:.0f} s",
    }


@dataclasses.dataclass
class Part:
    name: str
    what: str
    estimate_s: float  # on the GPU, for the budget (model builds included)
    run: Callable[[Context, float], dict]
    extra: bool = False  # not in the default list's required set: run only with time left


PARTS = [
    Part("matmul", "bf16 matmul ceiling", 10, lambda c, b: part_matmul(c)),
    Part("gen-8b", "generation, 8B shape", 60, lambda c, b: part_gen(c, "llama-8b")),
    Part("sft-8b", "LoRA SFT, 8B shape", 60, lambda c, b: part_sft(c, "llama-8b", batch=4)),
    Part("gen-135m", "generation, 135M shape", 30, lambda c, b: part_gen(c, "smollm2-135m")),
    Part("sft-135m", "LoRA SFT, 135M shape", 30, lambda c, b: part_sft(c, "smollm2-135m", batch=16)),
    Part("ppo", "PPO step (teams_rl.policy)", 60, lambda c, b: part_policy(c, "ppo")),
    Part("grpo", "GRPO step (teams_rl.policy)", 45, lambda c, b: part_policy(c, "grpo")),
    Part("zero2", "ZeRO-2 step (accelerate launch)", 120, part_zero2),
    Part(
        "sft-8b-nogc",
        "LoRA SFT, 8B, no checkpointing",
        50,
        lambda c, b: part_sft(c, "llama-8b", batch=4, checkpointing=False),
        extra=True,
    ),
    Part("sft-8b-bs8", "LoRA SFT, 8B, batch 8", 50, lambda c, b: part_sft(c, "llama-8b", batch=8), extra=True),
]


VERSIONS = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "datatrove", "pydantic",
    "typing_extensions", "huggingface_hub", "pyarrow", "fsspec", "tokenizers", "numpy",
)  # fmt: skip


def environment(ctx: Context) -> dict:
    import importlib.metadata

    import torch

    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": sys.version.split()[0], "versions": versions, "device": ctx.device}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30, "cuda": torch.version.cuda}
    return env


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        f"{'part':<12} {'status':<8} {'wall s':>7} {'step s':>7} {'tokens/s':>10} {'MFU':>6} {'HFU':>6} "
        f"{'GiB':>5}  notes"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        note = r.get("note") or r.get("error") or ""
        lines.append(
            f"{r['part']:<12} {r['status']:<8} {_fmt(r.get('elapsed_s'), '7.1f'):>7} "
            f"{_fmt(r.get('step_s'), '7.3f'):>7} {_fmt(r.get('tokens_per_s'), '10,.0f'):>10} "
            f"{_fmt(r.get('mfu'), '6.1%'):>6} {_fmt(r.get('hfu'), '6.1%'):>6} {_fmt(r.get('peak_gib'), '5.1f'):>5}  "
            f"{note}"
        )
    return "\n".join(lines)


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _run_parts(ctx, selected, rows, report, out, budget, began, *, estimates: bool) -> bool:
    """Run each part guarded, skipping those whose estimate no longer fits; returns whether it was interrupted."""
    import torch

    interrupted = False
    for part in selected:
        elapsed = time.perf_counter() - began
        estimate = part.estimate_s if estimates else 0
        if interrupted or elapsed + estimate > budget:
            why = "interrupted" if interrupted else f"over budget ({elapsed:.0f} s + ~{estimate:.0f} > {budget:.0f})"
            rows.append({"part": part.name, "status": "skipped", "note": why})
            print(f"[{elapsed:6.1f}s] {part.name}: skipped, {why}", flush=True)
            continue
        print(f"[{elapsed:6.1f}s] {part.name}: {part.what} ...", flush=True)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        row = {"part": part.name, "what": part.what}
        try:
            row |= {"status": "ok", **part.run(ctx, budget - elapsed)}
        except KeyboardInterrupt:
            row |= {"status": "stopped", "error": "interrupted (time limit)"}
            interrupted = True
        except Exception as err:  # one part's failure is a row of the table, the rest still run
            traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0]
            row |= {"status": "failed", "error": f"{type(err).__name__}: {first}"[:300]}
        row["elapsed_s"] = time.perf_counter() - start
        row["peak_gib"] = _peak_gib(ctx)
        rows.append(row)
        ctx.free()
        print(
            f"[{time.perf_counter() - began:6.1f}s] {part.name}: {row['status']} in {row['elapsed_s']:.1f} s",
            flush=True,
        )
        report["total_s"] = time.perf_counter() - began
        _write(out, report)
    return interrupted


def run(args) -> int:
    import torch

    selected = [p for p in PARTS if p.name in args.parts] if args.parts else PARTS
    unknown = set(args.parts or ()) - {p.name for p in PARTS}
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))} (see --list)")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run with --dry-run here (or on the GPU machine: bench/gpu_check.sh)")
    budget = args.budget_s if args.budget_s is not None else (math.inf if args.dry_run else 400.0)
    out_dir = (
        Path(args.out)
        if args.out
        else Path(os.environ.get("OUT") or (tempfile.gettempdir() if args.dry_run else RESULTS_DIR))
    )
    out = out_dir / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = Context(args.dry_run, work, Path(args.tokenizer), args.peak_tflops)
    text, flops = shapes_report(peak_tflops=args.peak_tflops)
    print(text)
    report = {
        "mode": "dry-run" if args.dry_run else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "budget_s": budget,
        "peak_tflops": args.peak_tflops,
        "environment": environment(ctx),
        "flops": flops,
        "flop_convention": flops_per_token.__doc__,
        "parts": [],
    }
    print(f"environment: {json.dumps(report['environment'])}")
    rows = report["parts"]
    began = time.perf_counter()
    try:
        interrupted = _run_parts(ctx, selected, rows, report, out, budget, began, estimates=not args.dry_run)
    except KeyboardInterrupt:  # between parts: what is done is still reported
        interrupted = True
    report["total_s"] = time.perf_counter() - began
    _write(out, report)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    print(
        f"\nMFU = tokens/s x model FLOPs per token / {args.peak_tflops:.0f} TFLOP/s (bf16 dense datasheet peak); "
        "model FLOPs per token = 4N + 3A + 6N_lora (frozen base: no weight gradients; causal attention A counted "
        "at half the square; no recomputation); HFU adds gradient checkpointing's second forward and TRL's "
        "chunked-loss head recompute. A full fine-tune's 6N would overstate a LoRA run ~1.5x."
    )
    goals = [r for r in rows if r.get("mfu") is not None and not args.dry_run]  # dry: tiny shapes, no meaning
    for r in goals:
        verdict = "met" if r["mfu"] >= MFU_GOAL else "not met"
        print(f"{r['part']}: MFU {r['mfu']:.1%}, HFU {r['hfu']:.1%}: the {MFU_GOAL:.0%} MFU goal is {verdict}")
    if ctx.ceiling_tflops:
        share = ctx.ceiling_tflops / ctx.peak
        print(f"measured bf16 matmul ceiling: {ctx.ceiling_tflops:.0f} TFLOP/s ({share:.0%} of the peak)")
    print(f"total {report['total_s']:.0f} s; results in {out}")
    if interrupted:
        return 130
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


def zero2_child(args) -> int:
    """What ``accelerate launch`` runs in the ``zero2`` part: the project's SFT, timed, the engine recorded."""
    from teams_rl.sft.train import main as sft_main

    timer = step_timer(_sync_if_cuda)
    sft_args = args.sft_args[1:] if args.sft_args[:1] == ["--"] else args.sft_args
    sft_main(sft_args, callbacks=[timer])
    if int(os.environ.get("RANK", "0")) == 0:
        _write(Path(args.json), {"steps": timer.steps, "losses": timer.losses, "engine": timer.engine})
    return 0


def _sync_if_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    if args.command == "run" and args.list:
        for p in PARTS:
            print(
                f"{p.name:<12} ~{p.estimate_s:>4.0f} s  {p.what}{'  (extra: only with time left)' if p.extra else ''}"
            )
        return 0
    if args.command == "run":
        return run(args)
    if args.command == "shapes":
        print(shapes_report(seq=args.seq, peak_tflops=args.peak_tflops, meta=not args.no_meta)[0])
        return 0
    if args.command == "wheels":
        lines, problems = check_wheels(Path(args.dir))
        print("\n".join(lines))
        for p in problems:
            print(f"  PROBLEM: {p}")
        return 1 if problems else 0
    if args.command == "fetch":
        fetch(Path(args.dir))
        return 0
    return zero2_child(args)


def _parts(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The command defaults to run (`bench/gpu_check.py --dry-run`). On the GPU machine start it through "
        "bench/gpu_check.sh, which installs the carried wheels first.",
    )
    sub = parser.add_subparsers(dest="command")
    r = sub.add_parser("run", help="measure (on a GPU), or --dry-run every part at tiny sizes on the CPU")
    r.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks every code path, no timing")
    r.add_argument("--parts", type=_parts, default=None, help="comma-separated subset, in the listed order (--list)")
    r.add_argument("--list", action="store_true", help="print the parts and their GPU estimates, then exit")
    r.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip parts that no longer fit (default 400 s on the GPU, none dry)",
    )
    r.add_argument("--out", default=None, help="folder for gpu_check.json (default $OUT, else bench/results/)")
    r.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="SmolLM2's tokenizer folder (from --fetch)")
    r.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the MFU denominator (bf16 dense peak)")
    s = sub.add_parser("shapes", help="parameter counts (meta device) and FLOPs per token of both shapes")
    s.add_argument("--seq", type=int, default=2048)
    s.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    s.add_argument("--no-meta", action="store_true", help="formula only: do not build the models on the meta device")
    w = sub.add_parser("wheels", help="check the carried wheels: the manifest's versions, requirements, size")
    w.add_argument("--dir", default=str(WHEEL_DIR))
    f = sub.add_parser(
        "fetch", help="download (or build) the manifest's wheels for the GPU machine, export the tokenizer"
    )
    f.add_argument("--dir", default=str(WHEEL_DIR))
    z = sub.add_parser("zero2-child", help="(internal) the process accelerate launch starts in the zero2 part")
    z.add_argument("--json", required=True)
    z.add_argument("sft_args", nargs=argparse.REMAINDER)
    return parser


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
