"""The base model and tokenizer for SFT: the chat template (the base's own, or ChatML), the end-of-turn token as EOS,
and the model loaded through the project's one loader (quantized for QLoRA)."""

from __future__ import annotations

import logging

from trl import get_quantization_config

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.loader import CHATML_TEMPLATE, load_causal_lm, load_tokenizer

logger = logging.getLogger(__name__)


def chatml_template(tokenizer) -> str:
    """ChatML for a base without a template. If ``<|im_end|>`` is not one token of its vocabulary (Llama-2/3
    bases), each turn ends with the base's own EOS instead: no new tokens, so LoRA needs no resized embeddings,
    and the model learns to stop on a token it already knows."""
    if "<|im_end|>" in tokenizer.get_vocab():
        return CHATML_TEMPLATE
    bos = "{{ bos_token }}" if tokenizer.bos_token else ""
    return (
        bos + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant answer (the token to stop on)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "PROBE"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    after = text[text.rindex("PROBE") + len("PROBE") :]
    specials = {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}
    return next((s for s in sorted(specials, key=len, reverse=True) if s and after.startswith(s)), None)


def chat_tokenizer(path: str, script_args, training_args, model_args):
    """The base's tokenizer with the chat template SFT trains in and EOS at the template's end of turn."""
    tokenizer = load_tokenizer(
        path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        pad_from_eos=False,
        field="model_name_or_path",
    )
    own = bool(tokenizer.chat_template)
    if script_args.chat_template == "model" and not own:
        raise TeamsRLError(
            "the base model has no chat template; use chat_template: auto or chatml", field="chat_template"
        )
    if script_args.chat_template == "chatml" or not own:
        tokenizer.chat_template = chatml_template(tokenizer)
    eot = training_args.eos_token or end_of_turn(tokenizer)
    if eot is None:
        logger.warning("the chat template ends answers with no special token; generation may not stop")
    elif eot != tokenizer.eos_token:
        logger.info("EOS aligned with the chat template's end of turn: %s -> %s", tokenizer.eos_token, eot)
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, ("model's own" if own and script_args.chat_template != "chatml" else "ChatML (teams-rl)")


def base_model(path: str, model_args, training_args, tokenizer, quantized: bool = True):
    """The base to train (4/8-bit when the recipe asks and ``quantized``), stopping at the tokenizer's EOS."""
    import torch
    from accelerate import PartialState

    quantization = get_quantization_config(model_args) if quantized else None
    # A quantized base: each process holds its own copy on its own GPU (DDP); on a CPU-only machine it stays on CPU.
    device_map = {"": PartialState().local_process_index} if quantization and torch.cuda.is_available() else None
    model = load_causal_lm(
        path,
        dtype=model_args.dtype,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization,
        device_map=device_map,
        field="model_name_or_path",
    )
    model.config.use_cache = not training_args.activation_checkpointing
    # Stop on the end-of-turn token as well as the base's own EOS; pad with the tokenizer's pad.
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    model.generation_config.eos_token_id = list(dict.fromkeys([tokenizer.eos_token_id, *eos]))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
