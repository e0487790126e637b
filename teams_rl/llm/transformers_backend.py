"""In-process transformers backend: batched generation with left padding and the chat template, per-row seeds,
and log-probability scoring of answer choices."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from teams_rl.llm.decoding import Row, decode
from teams_rl.llm.loader import CHATML_TEMPLATE, default_device, load_causal_lm, load_tokenizer
from teams_rl.llm.prefix_cache import PrefixCache, SplitPrompt, shared_opening

logger = logging.getLogger(__name__)

PREFIX_IDS_KEPT = 64  # distinct prompt prefixes whose token ids are remembered


class TransformersBackend:
    """A causal LM loaded in-process (CPU default, GPU when present). Loads lazily on the first call.

    Args:
        model: Hub id, local folder, or an embedded name such as ``smollm2-135m``.
        dtype: ``auto`` (float32 on CPU, bfloat16 on GPU), ``float32``, ``bfloat16`` or ``float16``.
        batch_size: rows decoded together (a finished row's slot goes to the next request); scoring forwards twice
            as many.
        prefix_cache: compute the shared opening of chat prompts (system prompt, few-shot turns) once and reuse its
            keys and values (``teams_rl/llm/prefix_cache.py``).
        field: the recipe key that named the model, for error messages.
    """

    reports_each_result = True  # generate() calls on_result as each row ends

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str | None = None,
        prefix_cache: bool = True,
        field: str | None = None,
    ):
        self.model_id = model
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = device
        self.use_prefix_cache = prefix_cache
        self.field = field
        self._model = None
        self._tokenizer = None
        self.prefixes: PrefixCache | None = None  # made at load; without prefix_cache it only pads batches
        self._prefix_ids: OrderedDict = OrderedDict()  # (turns, role, opening) -> candidate prefix ids

    # -- loading ---------------------------------------------------------------------------------------------
    def load(self):
        if self._model is not None:
            return self._model, self._tokenizer
        device = self.device or default_device()
        tokenizer = load_tokenizer(self.model_id, padding_side="left", field=self.field)
        model = load_causal_lm(self.model_id, dtype=self.dtype, device=device, field=self.field)
        model.eval()
        if not tokenizer.chat_template:
            logger.warning("%s has no chat template; using ChatML", self.model_id)
            tokenizer.chat_template = CHATML_TEMPLATE
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self.prefixes = PrefixCache(model)
        return model, tokenizer

    def _template_ids(self, messages, generation_prompt: bool) -> list[int]:
        enc = self._tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=generation_prompt, tokenize=True
        )
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)

    def _prompt_ids(self, messages) -> list[int]:
        return self._template_ids(messages, True)

    def _split(self, messages) -> SplitPrompt:
        """The prompt's ids, with the turns before the last one, and the opening lines the last turn shares with
        the example turns before it, as the cacheable prefix (both a function of the prompt alone)."""
        full = self._prompt_ids(messages)
        if not self.use_prefix_cache or len(messages) < 2:
            return SplitPrompt((), full)
        turns, longer = self._prefix_candidates(messages)
        n = len(longer)
        # the opening's last tokens may merge differently at the cut ("\n\n" alone, "\n" "\n" before a word)
        while n > len(turns) and full[:n] != longer[:n]:
            n -= 1
        return self.prefixes.split(longer[:n] if n > len(turns) else turns, full)

    def _prefix_candidates(self, messages) -> tuple[list[int], list[int]]:
        """The ids of the turns before the last one, and of those turns plus the last turn's shared opening lines;
        tokenized once per distinct prefix (every request of an action shares them), not once per request."""
        opening = shared_opening(messages)
        key = (tuple((m["role"], m["content"]) for m in messages[:-1]), messages[-1]["role"], opening)
        if key in self._prefix_ids:
            self._prefix_ids.move_to_end(key)
            return self._prefix_ids[key]
        turns = self._template_ids(messages[:-1], False)
        longer = turns
        if opening:
            probe = [*messages[:-1], {"role": messages[-1]["role"], "content": opening}]
            text = self._tokenizer.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
            at = text.rfind(opening)
            if at >= 0:
                longer = self._tokenizer(text[: at + len(opening)], add_special_tokens=False)["input_ids"]
        self._prefix_ids[key] = (turns, list(longer))
        if len(self._prefix_ids) > PREFIX_IDS_KEPT:
            self._prefix_ids.popitem(last=False)
        return self._prefix_ids[key]

    def _batch(self, rows: list[SplitPrompt]):
        return self.prefixes.batch(rows, self._tokenizer.pad_token_id, self._device)

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ids.add(self._tokenizer.eos_token_id)
        return ids

    # -- generate --------------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], on_result: Callable[[int, GenerationResult], None] | None = None
    ) -> list[GenerationResult]:
        """Continuous batches of up to ``batch_size`` rows (``decoding.py``); ``on_result(i, result)`` is called as
        each row ends, so the ledger can commit it before the rest of the call is done."""
        if not requests:
            return []
        model, tokenizer = self.load()
        rows = [
            Row(self._split(r.messages), r.sampling.max_new_tokens, r.sampling.temperature, r.sampling.top_p, r.seed)
            for r in requests
        ]
        results: list[GenerationResult | None] = [None] * len(requests)

        def done(i: int, tokens: list[int], stopped: bool, seconds: float) -> None:
            results[i] = GenerationResult(
                text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                finish_reason="stop" if stopped else "length",
                prompt_tokens=len(rows[i].prompt.ids),
                completion_tokens=len(tokens) + int(stopped),  # the end token was generated too
                latency_s=seconds,
            )
            if on_result is not None:
                on_result(i, results[i])

        decode(
            model,
            rows,
            self.prefixes,
            pad_id=tokenizer.pad_token_id,
            eos_ids=self._eos_ids(),
            slots=self.batch_size,
            on_done=done,
        )
        return results  # type: ignore[return-value]

    # -- score ----------------------------------------------------------------------------------------------
    def score(
        self, requests: Sequence[ScoreRequest], on_result: Callable[[int, ScoreResult], None] | None = None
    ) -> list[ScoreResult]:
        """Sum of log-probabilities of each choice's tokens as the assistant's answer.

        When every choice of a request is a single token (a judge's Yes/No, a grade 1-10) one forward of the prompt
        scores them all from its last position; otherwise each choice is appended to the prompt and scored from the
        positions that predict its tokens."""
        import torch

        if not requests:
            return []
        model, tokenizer = self.load()
        prompts = [self._split(r.messages) for r in requests]
        tokens = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for r in requests for c in r.choices}
        rows: list[tuple[int, list[tuple[int, list[int]]], list[int]]] = []  # (request, [(choice, ids)], tail)
        for i, r in enumerate(requests):
            ids = [tokens[c] for c in r.choices]
            if all(len(c) == 1 for c in ids):
                rows.append((i, list(enumerate(ids)), []))
            else:
                rows += [(i, [(j, c)], c) for j, c in enumerate(ids)]
        logprobs = [[float("-inf")] * len(r.choices) for r in requests]
        began = time.perf_counter()
        order = sorted(range(len(rows)), key=lambda k: len(prompts[rows[k][0]].suffix) + len(rows[k][2]))
        step = self.batch_size * 2  # no generation: a forward is cheap next to a decode loop
        for start in range(0, len(order), step):
            chunk = [rows[k] for k in order[start : start + step]]
            inputs = self._batch([SplitPrompt(prompts[i].prefix, prompts[i].suffix + tail) for i, _, tail in chunk])
            keep = max(len(tail) for *_, tail in chunk) + 1
            logits = inputs.forward(model, logits_to_keep=keep).float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, (i, scored, tail) in enumerate(chunk):
                if not tail:  # single-token choices: the prompt's last position predicts each of them
                    for j, (token,) in scored:
                        logprobs[i][j] = float(logp[row, keep - 1, token])
                    continue
                (j, _), n = scored[0], len(tail)
                # logits at position t predict token t+1; the choice occupies the last n positions
                positions = range(keep - 1 - n, keep - 1)
                logprobs[i][j] = float(sum(logp[row, pos, tok] for pos, tok in zip(positions, tail, strict=True)))
        share = (time.perf_counter() - began) / len(requests)
        results = [
            ScoreResult(logprobs=lp, prompt_tokens=len(p.ids), latency_s=share)
            for lp, p in zip(logprobs, prompts, strict=True)
        ]
        for i, result in enumerate(results if on_result else ()):
            on_result(i, result)
        return results
