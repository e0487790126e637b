"""In-process transformers backend: batched generation with left padding and the chat template, per-row seeds,
and log-probability scoring of answer choices."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from teams_rl.llm.loader import CHATML_TEMPLATE, default_device, load_causal_lm, load_tokenizer

logger = logging.getLogger(__name__)


def _row_sampler_class():
    """Built lazily so importing this module does not import torch."""
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        """Samples each row with its own generator, then leaves only the drawn token finite.

        ``generate`` runs greedy on top of this, so a row's draws depend on its own seed and not on
        which other rows share the batch (HF sampling would use one global RNG for the whole batch).
        """

        def __init__(self, requests: Sequence[GenerationRequest], device):
            self.params = [(r.sampling.temperature, r.sampling.top_p) for r in requests]
            self.generators = [
                torch.Generator(device=device).manual_seed(r.seed) if r.sampling.temperature > 0 else None
                for r in requests
            ]

        def __call__(self, input_ids, scores):
            picked = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
            for row, ((temperature, top_p), gen) in enumerate(zip(self.params, self.generators, strict=True)):
                logits = scores[row].float()
                if gen is None:
                    picked[row] = logits.argmax()
                    continue
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
                    sorted_p[drop] = 0.0
                    probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
                picked[row] = torch.multinomial(probs, 1, generator=gen)[0]
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(scores.shape[0]), picked] = 0.0
            return out

    return RowSampler


class TransformersBackend:
    """A causal LM loaded in-process (CPU default, GPU when present). Loads lazily on the first call.

    Args:
        model: Hub id, local folder, or an embedded name such as ``smollm2-135m``.
        dtype: ``auto`` (float32 on CPU, bfloat16 on GPU), ``float32``, ``bfloat16`` or ``float16``.
        batch_size: requests per forward batch; requests are grouped by ``max_new_tokens`` and sorted by length.
        field: the recipe key that named the model, for error messages.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str | None = None,
        field: str | None = None,
    ):
        self.model_id = model
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = device
        self.field = field
        self._model = None
        self._tokenizer = None

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
        return model, tokenizer

    def _prompt_ids(self, messages) -> list[int]:
        enc = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)

    def _pad_left(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self._tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self._device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self._device)
        return ids, mask

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ids.add(self._tokenizer.eos_token_id)
        return ids

    # -- generate --------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        if not requests:
            return []
        model, tokenizer = self.load()
        prompts = [self._prompt_ids(r.messages) for r in requests]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.sampling.max_new_tokens].append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        sampler_cls = _row_sampler_class()
        eos_ids = self._eos_ids()
        for max_new, members in groups.items():
            members.sort(key=lambda i: len(prompts[i]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                ids, mask = self._pad_left([prompts[i] for i in batch])
                began = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=max_new,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tokenizer.pad_token_id,
                        logits_processor=[sampler_cls([requests[i] for i in batch], self._device)],
                    )
                share = (time.perf_counter() - began) / len(batch)
                for row, i in enumerate(batch):
                    new = out[row, ids.shape[1] :].tolist()
                    end = next((k for k, t in enumerate(new) if t in eos_ids), None)
                    kept = new if end is None else new[:end]
                    results[i] = GenerationResult(
                        text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                        finish_reason="length" if end is None else "stop",
                        prompt_tokens=len(prompts[i]),
                        completion_tokens=len(kept) + (0 if end is None else 1),
                        latency_s=share,
                    )
        return results  # type: ignore[return-value]

    # -- score -----------------------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Sum of log-probabilities of each choice's tokens as the assistant's answer (one forward per pair)."""
        import torch

        if not requests:
            return []
        model, tokenizer = self.load()
        pairs = []  # (request index, choice index, prompt ids, choice ids)
        prompt_len = []
        for i, r in enumerate(requests):
            prompt = self._prompt_ids(r.messages)
            prompt_len.append(len(prompt))
            for j, choice in enumerate(r.choices):
                pairs.append((i, j, prompt, tokenizer(choice, add_special_tokens=False)["input_ids"]))
        logprobs = [[float("-inf")] * len(r.choices) for r in requests]
        began = time.perf_counter()
        order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]) + len(pairs[k][3]))
        step = self.batch_size * 2  # one-token forwards are cheap next to generation
        for start in range(0, len(order), step):
            chunk = [pairs[k] for k in order[start : start + step]]
            ids, mask = self._pad_left([p + c for _, _, p, c in chunk])
            keep = max(len(c) for *_, c in chunk) + 1
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, (i, j, _, choice) in enumerate(chunk):
                n = len(choice)
                # logits at position t predict token t+1; the choice occupies the last n positions
                positions = range(keep - 1 - n, keep - 1)
                logprobs[i][j] = float(sum(logp[row, pos, tok] for pos, tok in zip(positions, choice, strict=True)))
        share = (time.perf_counter() - began) / len(requests)
        return [
            ScoreResult(logprobs=lp, prompt_tokens=n, latency_s=share)
            for lp, n in zip(logprobs, prompt_len, strict=True)
        ]
