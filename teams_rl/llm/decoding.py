"""Continuous batched decoding for the in-process backend.

``transformers``' ``generate`` keeps every row of a batch in the forward until the longest one ends, draws all rows
from one random generator, and recomputes a shared prompt opening for every request. Synthesis sends batches whose
answers range from a dozen tokens to the cap, so here:

- each row samples with its own generator (seeded per request), so its text does not depend on its batch mates;
- a row leaves the batch the step it ends, and a waiting request takes its slot (prefilled on its own tokens,
  after its cached prompt prefix, see ``prefix_cache.py``), so the forward stays full;
- rows of different lengths share one key/value cache, left-padded: the attention mask hides the padding and the
  position ids count only each row's real tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from teams_rl.llm.prefix_cache import PrefixCache, SplitPrompt, cache_keyword

NUCLEUS_CANDIDATES = 256
# Rows prefilled per forward. A join's prompts can range from 20 to 200 tokens and a forward pads them all to the
# longest; eight length-sorted rows (hundreds of tokens a forward) waste little padding and keep the matmuls large.
PREFILL_GROUP = 8


@dataclass(frozen=True)
class Row:
    """One request to decode: its prompt and how to sample it."""

    prompt: SplitPrompt
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


def sample(logits, rows: Sequence[Row], generators) -> list[int]:
    """One token id per row of ``logits`` [rows, vocab]: argmax where the temperature is 0, else nucleus sampling
    with the row's own generator. Each row is computed on its own (a softmax over a whole batch may round
    differently from one over a single row, and a row must draw the same tokens whatever its batch). The nucleus
    is looked for among the ``NUCLEUS_CANDIDATES`` likeliest tokens (a top-k instead of sorting the whole
    vocabulary for every token) and, for the rare flat distribution whose nucleus is larger, in the full sort.
    The draw is made among the nucleus alone (``multinomial`` spends one random number per entry it is given:
    over the whole vocabulary that was 49k per token, most of a row's sampling time)."""
    import torch

    picked = []
    for row, r, generator in zip(logits.float(), rows, generators, strict=True):
        if r.temperature <= 0:
            picked.append(int(row.argmax()))
            continue
        probs = torch.softmax(row / r.temperature, dim=-1)
        if r.top_p >= 1.0:
            picked.append(int(torch.multinomial(probs, 1, generator=generator)[0]))
            continue
        weights, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]))  # sorted, likeliest first
        cum = weights.cumsum(-1)
        if cum[-1] < r.top_p:  # the nucleus reaches past the candidates
            weights, index = probs.sort(descending=True)
            cum = weights.cumsum(-1)
        size = int((cum - weights <= r.top_p).sum())  # the smallest set reaching top_p
        # drawn in vocabulary order, not rank order: a rank swap between two near-equal tokens (rounding that differs
        # by batch) must not change which token a draw lands on
        index, order = index[:size].sort()
        choice = torch.multinomial(weights[:size][order], 1, generator=generator)
        picked.append(int(index[choice]))
    return picked


class _Batch:
    """The rows in flight: their cache, mask, next positions and tokens so far."""

    def __init__(self):
        self.rows: list[int] = []  # request indices
        self.cache = None
        self.mask = None  # [rows, cache width]
        self.positions: list[int] = []  # next position id of each row
        self.last: list[int] = []  # last token of each row
        self.done: list[bool] = []  # ended rows not yet dropped

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, alive: list[int]) -> None:
        """Drop the rows not listed (by position in the batch) and the columns no row still needs."""
        import torch

        if not alive:
            self.__init__()
            return
        mask = self.mask[torch.tensor(alive, device=self.mask.device)]
        start = int(mask.any(0).nonzero()[0])  # leading columns that are padding for every row left
        for layer in self.cache.layers:
            layer.keep_rows(alive, start)  # in place
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in alive]
        self.positions = [self.positions[i] for i in alive]
        self.last = [self.last[i] for i in alive]
        self.done = [False] * len(alive)

    def join(self, *others: _Batch) -> None:
        """Append the rows of ``others``, left-padding every cache to the widest (one copy, however many)."""
        import torch
        import torch.nn.functional as F

        from teams_rl.llm.kv_cache import stacked_cache

        parts = [b for b in (self, *others) if b.rows]
        if len(parts) <= 1:
            if parts and parts[0] is not self:
                self.__dict__.update(parts[0].__dict__)
            return
        width = max(b.mask.shape[1] for b in parts)
        pads = [width - b.mask.shape[1] for b in parts]
        layers = [[(layer.keys, layer.values) for layer in b.cache.layers] for b in parts]
        self.cache = stacked_cache(layers, pads)
        self.mask = torch.cat([F.pad(b.mask, (pad, 0)) for b, pad in zip(parts, pads, strict=True)])
        self.rows = [i for b in parts for i in b.rows]
        self.positions = [p for b in parts for p in b.positions]
        self.last = [t for b in parts for t in b.last]
        self.done = [d for b in parts for d in b.done]


def decode(
    model,
    rows: Sequence[Row],
    prefixes: PrefixCache,
    *,
    pad_id: int,
    eos_ids: set[int],
    slots: int,
    on_done: Callable[[int, list[int], bool, float], None],
) -> None:
    """Decode every row with at most ``slots`` in flight; ``on_done(index, tokens, stopped, seconds)`` is called
    as each row ends (``tokens`` without the end token; ``stopped`` is False when it hit ``max_new_tokens``;
    ``seconds`` since the row was admitted)."""
    import time

    import torch

    device = next(model.parameters()).device
    generators = [torch.Generator(device=device).manual_seed(r.seed) for r in rows]
    tokens: list[list[int]] = [[] for _ in rows]
    waiting = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt.suffix), reverse=True)  # short first
    batch = _Batch()
    keyword = cache_keyword()
    admitted_at = [0.0] * len(rows)

    def pick(i: int, token: int) -> bool:
        """Record row ``i``'s next token; True while the row goes on."""
        r = rows[i]
        if token in eos_ids:
            on_done(i, tokens[i], True, time.perf_counter() - admitted_at[i])
            return False
        tokens[i].append(token)
        if len(tokens[i]) >= r.max_new_tokens:
            on_done(i, tokens[i], False, time.perf_counter() - admitted_at[i])
            return False
        return True

    with torch.inference_mode():  # the caches are inference tensors: their in-place edits must happen in it too
        while waiting or batch:
            free = slots - len(batch)
            if waiting and (not batch or free >= max(1, slots // 4)):  # refill in groups: a join copies the cache
                admitted = [waiting.pop() for _ in range(min(free, len(waiting)))]  # shortest first
                for i in admitted:
                    admitted_at[i] = time.perf_counter()
                # prefilled in groups of similar length: one padded forward over all of them computes the padding too
                groups = [admitted[k : k + PREFILL_GROUP] for k in range(0, len(admitted), PREFILL_GROUP)]
                batch.join(*(_prefill(model, rows, g, generators, prefixes, pad_id, pick) for g in groups))
            if not batch:
                continue
            mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
            logits = model(
                input_ids=torch.tensor([[t] for t in batch.last], device=device),
                attention_mask=mask,
                position_ids=torch.tensor([[p] for p in batch.positions], device=device),
                use_cache=True,
                **{keyword: batch.cache},
            ).logits[:, -1]
            batch.mask = mask
            live = [k for k, d in enumerate(batch.done) if not d]
            drawn = sample(
                logits[live], [rows[batch.rows[k]] for k in live], [generators[batch.rows[k]] for k in live]
            )
            for k, token in zip(live, drawn, strict=True):
                batch.positions[k] += 1
                if pick(batch.rows[k], token):
                    batch.last[k] = token
                else:
                    batch.done[k] = True
            ended = sum(batch.done)
            # a finished row rides along (its outputs ignored) until a few have ended: a compaction moves rows
            if ended and (ended >= max(1, len(batch) // 8) or (waiting and slots - len(batch) + ended >= slots // 4)):
                batch.keep([k for k, d in enumerate(batch.done) if not d])


def _prefill(model, rows, admitted, generators, prefixes: PrefixCache, pad_id: int, pick) -> _Batch:
    """Run the admitted rows' prompts (after their cached prefixes) and draw each one's first token."""
    inputs = prefixes.batch([rows[i].prompt for i in admitted], pad_id, next(model.parameters()).device)
    logits = inputs.forward(model, logits_to_keep=1, use_cache=True)[:, -1]
    batch = _Batch()
    batch.rows = list(admitted)
    batch.cache, batch.mask = inputs.cache, inputs.attention_mask
    batch.positions = [int(n) for n in inputs.attention_mask.sum(1).tolist()]
    batch.last = sample(logits, [rows[i] for i in admitted], [generators[i] for i in admitted])
    alive = [k for k, (i, token) in enumerate(zip(admitted, batch.last, strict=True)) if pick(i, token)]
    batch.done = [False] * len(admitted)
    if len(alive) < len(admitted):
        batch.keep(alive)
    return batch
