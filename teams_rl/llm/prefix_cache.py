"""A prompt-prefix KV cache for the in-process backend.

Every action prompt opens with the same system prompt and few-shot turns; only its last user turn changes. The
keys and values of that shared opening are computed once per process (alone, batch 1, so a row's numbers never
depend on which other rows share its batch) and every later request that starts with it feeds only its own last
turn through the model. A batch may mix prefixes of different lengths: each row's cached prefix is left-padded to
the longest, and its own tokens follow after a second run of padding, ``[pad][prefix][pad][suffix]``. The
attention mask hides both runs and the position ids count only real tokens, so every row sees exactly the
sequence it would see alone.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

MIN_PREFIX_TOKENS = 32  # shorter openings are cheaper to recompute than to copy into a batch cache


@dataclass(frozen=True)
class SplitPrompt:
    """A prompt's token ids as the cached ``prefix`` (possibly empty) and the ``suffix`` fed to the model."""

    prefix: tuple[int, ...]
    suffix: list[int]

    @property
    def ids(self) -> list[int]:
        return [*self.prefix, *self.suffix]


@dataclass
class PaddedBatch:
    """Inputs for one forward over ``[pad][prefix][pad][suffix]`` rows."""

    input_ids: object  # torch.LongTensor [batch, prefix_width + suffix_width]
    attention_mask: object  # 1 on real tokens
    cache: object | None  # a DynamicCache holding prefix_width positions, or None when no row has a prefix
    prefix_width: int

    def position_ids(self):
        """Real tokens counted from 0 in each row; padding gets 0 (and is masked)."""
        positions = self.attention_mask.long().cumsum(-1) - 1
        return positions.masked_fill(self.attention_mask == 0, 0)

    def forward(self, model, *, logits_to_keep: int, use_cache: bool = False):
        """The model on each row's tokens after the cached prefix (the cache, when kept, grows by them); the logits
        of the last ``logits_to_keep`` positions."""
        import torch

        from teams_rl.llm.kv_cache import roomy_cache

        if use_cache and self.cache is None:
            self.cache = roomy_cache()
        width = self.prefix_width
        with torch.inference_mode():
            return model(
                input_ids=self.input_ids[:, width:],
                attention_mask=self.attention_mask,
                position_ids=self.position_ids()[:, width:],
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **({} if self.cache is None else {cache_keyword(): self.cache}),
            ).logits


class PrefixCache:
    """Keys and values of prompt prefixes, computed once and reused (least recently used ones dropped).

    Args:
        model: the loaded causal LM.
        max_entries: prefixes kept; each costs layers x 2 x kv heads x head dim x length numbers.
        min_tokens: prefixes shorter than this are not cached.
    """

    def __init__(self, model, *, max_entries: int = 32, min_tokens: int = MIN_PREFIX_TOKENS):
        self.model = model
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], list[tuple[object, object]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def split(self, prefix_ids: Sequence[int], full_ids: Sequence[int]) -> SplitPrompt:
        """Use ``prefix_ids`` as the cached part when the full prompt really starts with it (a chat template may
        render a turn differently once another follows it) and it is long enough to be worth caching."""
        n = len(prefix_ids)
        if n < self.min_tokens or n >= len(full_ids) or list(full_ids[:n]) != list(prefix_ids):
            return SplitPrompt((), list(full_ids))
        return SplitPrompt(tuple(prefix_ids), list(full_ids[n:]))

    def layers(self, prefix: tuple[int, ...]) -> list[tuple[object, object]]:
        """Per layer (keys, values), each [1, kv heads, len(prefix), head dim]."""
        import torch
        from transformers import DynamicCache

        if prefix in self._entries:
            self._entries.move_to_end(prefix)
            self.hits += 1
            return self._entries[prefix]
        self.misses += 1
        device = next(self.model.parameters()).device
        cache = DynamicCache()
        with torch.inference_mode():
            ids = torch.tensor([prefix], device=device)
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_keyword(): cache})
        entry = [(layer.keys, layer.values) for layer in cache.layers]
        self._entries[prefix] = entry
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def batch(self, rows: Sequence[SplitPrompt], pad_id: int, device) -> PaddedBatch:
        """The padded inputs and the batch's prefix cache for ``rows``."""
        import torch

        from teams_rl.llm.kv_cache import stacked_cache

        prefix_width = max(len(r.prefix) for r in rows)
        suffix_width = max(len(r.suffix) for r in rows)
        ids, mask = [], []
        for r in rows:
            lpad, mpad = prefix_width - len(r.prefix), suffix_width - len(r.suffix)
            ids.append([pad_id] * lpad + list(r.prefix) + [pad_id] * mpad + r.suffix)
            mask.append([0] * lpad + [1] * len(r.prefix) + [0] * mpad + [1] * len(r.suffix))
        input_ids = torch.tensor(ids, device=device)
        attention_mask = torch.tensor(mask, device=device)
        if prefix_width == 0:
            return PaddedBatch(input_ids, attention_mask, None, 0)

        per_row = [self.layers(r.prefix) if r.prefix else None for r in rows]
        template = next(layers for layers in per_row if layers is not None)
        empty = [(k[:, :, :0], v[:, :, :0]) for k, v in template]  # a row without a cached prefix: all padding
        parts = [empty if layers is None else layers for layers in per_row]
        pads = [prefix_width - len(r.prefix) for r in rows]
        # one copy into buffers with room for the suffix the forward appends
        cache = stacked_cache(parts, pads, room=suffix_width)
        return PaddedBatch(input_ids, attention_mask, cache, prefix_width)


def shared_opening(messages: Sequence[dict]) -> str:
    """The opening lines the last turn shares with every earlier turn of its role: the fixed text of a few-shot
    template ("Edit this instruction... Instruction: {x}") that each example turn and the real one begin with.
    Whole lines only (up to the last line break they all share); empty when there is no earlier turn of that role
    or nothing is shared."""
    last = messages[-1] if messages else {}
    text = last.get("content")
    earlier = [m.get("content") for m in messages[:-1] if m.get("role") == last.get("role")]
    if not isinstance(text, str) or not earlier or not all(isinstance(e, str) for e in earlier):
        return ""
    shared = os.path.commonprefix([text, *earlier])
    return shared[: shared.rfind("\n") + 1]


@functools.cache
def cache_keyword() -> str:
    """transformers 5.x names the model's cache argument ``cache``; earlier releases ``past_key_values``."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
