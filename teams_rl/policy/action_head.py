"""The action head the instructor answers through: a zero-initialised linear layer on the last hidden state that
gives the logits of the menu digits, every other token masked (``add_action_head``); TRL's peft config that trains
and saves it in full (``instructor_peft_config``); and writing its trained weights beside the policy's
(``save_action_head``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.errors import TeamsRLError

MASK_VALUE = -1e9  # finite, so masked tokens get probability 0 without making entropies nan (0 * -inf)
ACTION_HEAD = "action_head"  # the attribute holding the head; peft's modules_to_save names it


def add_action_head(model, token_ids: Sequence[int]):
    """Give ``model`` an action head: the logits of ``token_ids`` become ``model.action_head(hidden)``, a linear
    layer on the last hidden state whose weights and bias start at zero, and every other token gets ``MASK_VALUE``.

    So the untrained instructor is exactly uniform over the actions in every state (and so is its KL reference:
    with the head in peft's ``modules_to_save``, switching the adapter off restores the zero head), yet it reads
    the instruction through the hidden state, and no tied weight (SmolLM2's ``lm_head`` is its input embedding)
    is trained. The head is looked up on ``model`` at every call, so peft's wrapper and ``deepcopy`` (a reference
    model) each use their own. Returns the hook handle.
    """
    import torch
    from torch import nn

    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if hasattr(head, "weight") else model.config.vocab_size
    ids = torch.tensor(list(token_ids))
    action_head = nn.Linear(head.in_features, len(ids), bias=True, dtype=head.weight.dtype, device=head.weight.device)
    nn.init.zeros_(action_head.weight)
    nn.init.zeros_(action_head.bias)
    setattr(model, ACTION_HEAD, action_head)
    object.__setattr__(head, "_teams_owner", model)  # not a submodule: only a way back to the model

    def hook(module, inputs, logits):
        answer = getattr(module._teams_owner, ACTION_HEAD)(inputs[0].to(action_head.weight.dtype))
        out = torch.full((*logits.shape[:-1], vocab), MASK_VALUE, dtype=logits.dtype, device=logits.device)
        out[..., ids.to(logits.device)] = answer.to(logits.dtype)
        return out

    return head.register_forward_hook(hook)


def instructor_peft_config(model_config, model):
    """TRL's peft config for the instructor, with the action head trained and saved in full (``modules_to_save``)
    and no LoRA on a tied output layer (merging would write the delta into the input embeddings as well)."""
    from trl import get_peft_config

    config = get_peft_config(model_config)
    if config is None:
        return None
    targets = config.target_modules
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied and targets is not None and not isinstance(targets, str) and "lm_head" in targets:
        raise TeamsRLError(
            "lm_head is tied to the input embeddings in this model: leave it out of lora_target_modules (the "
            "action head is what learns the answer)",
            field="lora_target_modules",
        )
    config.modules_to_save = [*(config.modules_to_save or []), ACTION_HEAD]
    config.exclude_modules = [ACTION_HEAD]  # trained in full, never LoRA'd (all-linear would pick it up)
    return config


HEAD_FILE = "action_head.safetensors"


def save_action_head(model, folder: Path) -> None:
    """Write the trained action head (peft's active copy when wrapped) beside the policy's weights."""
    from safetensors.torch import save_file

    head = getattr(model, ACTION_HEAD, None) or getattr(model.get_base_model(), ACTION_HEAD)
    if hasattr(head, "modules_to_save"):  # peft's ModulesToSaveWrapper: the trained copy
        head = head.modules_to_save[head.active_adapter if isinstance(head.active_adapter, str) else "default"]
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
