"""The one loader of causal LMs and tokenizers: a model reference (Hub id, folder or embedded name) resolved once,
one dtype rule, and load failures turned into one-line user errors naming the recipe key."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.refs import resolve_model

DTYPES = ("auto", "float32", "bfloat16", "float16")

# For base models that ship no chat template: plain ChatML, the format most instruction data uses.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str | None, device: str | None = None, *, field: str | None = None):
    """``auto`` (or None) is bfloat16 on a GPU and float32 on a CPU; otherwise the named torch dtype."""
    import torch

    name = name or "auto"
    if name not in DTYPES:
        raise TeamsRLError(f"unknown dtype '{name}' ({', '.join(DTYPES)})", field=field)
    if name == "auto":
        return torch.bfloat16 if (device or default_device()).startswith("cuda") else torch.float32
    return getattr(torch, name)


def _failed(ref: str, err: Exception, field: str | None) -> TeamsRLError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TeamsRLError(f"cannot load model '{ref}': {first}", field=field)


def load_causal_lm(
    ref: str,
    *,
    dtype: str | None = "auto",
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_class=None,
    field: str | None = None,
    new_head: str | None = None,
    **kwargs,
):
    """``model_class`` (default ``AutoModelForCausalLM``) ``.from_pretrained`` on the resolved reference.

    ``device`` moves the model there after loading (not with a ``device_map`` or a quantized model); other keyword
    arguments (``quantization_config``, ``device_map``, ``attn_implementation``, ``num_labels`` ...) pass through.
    ``new_head`` names a head the caller initialises itself (a value model's ``score``): transformers' load report
    is then not printed when all it says is that this head is missing and the causal LM's ``lm_head`` unused; any
    other report still is.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(ref, field=field)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with _expected_head_report(new_head):
        try:
            model = (model_class or AutoModelForCausalLM).from_pretrained(
                path,
                dtype=torch_dtype(dtype, device, field=field),
                revision=revision,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )
        except (OSError, ValueError) as err:  # missing files, a folder that holds no model, an unreachable Hub id
            raise _failed(ref, err, field) from None
    if device is not None:
        model = model.to(device)
    return model


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _DropExpectedHead(logging.Filter):
    """Drops a load report whose every row is the new head MISSING or the causal LM's ``lm_head`` UNEXPECTED."""

    def __init__(self, head: str):
        super().__init__()
        self.head = head

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in message:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in message.splitlines()[1:] if "|" in line]
        rows = [r for r in rows if r[0] and r[0] != "Key" and not set(r[0]) <= {"-", "+"}]
        expected = all(
            (status == "MISSING" and key.startswith(f"{self.head}."))
            or (status == "UNEXPECTED" and key.startswith("lm_head."))
            for key, status, *_ in rows
        )
        return not (rows and expected)


@contextlib.contextmanager
def _expected_head_report(head: str | None) -> Iterator[None]:
    if head is None:
        yield
        return
    logger, drop = logging.getLogger("transformers.modeling_utils"), _DropExpectedHead(head)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_tokenizer(
    ref: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str | None = None,
    pad_from_eos: bool = True,
    field: str | None = None,
):
    """The tokenizer of ``ref``, with ``padding_side`` set when given and (``pad_from_eos``) pad = eos when it has
    no pad token."""
    from transformers import AutoTokenizer

    path = resolve_model(ref, field=field)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _failed(ref, err, field) from None
    if padding_side:
        tokenizer.padding_side = padding_side
    if pad_from_eos and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
