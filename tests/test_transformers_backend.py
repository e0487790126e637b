"""TransformersBackend on a tiny random Llama: per-row seeded sampling, greedy, token counts, exact choice scoring,
load errors and the ChatML fallback."""

import shutil
from pathlib import Path

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.base import GenerationRequest, SamplingParams, ScoreRequest
from teams_rl.llm.loader import CHATML_TEMPLATE
from teams_rl.llm.transformers_backend import TransformersBackend

SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10)
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=10)


def _msgs(text: str, system: str | None = None) -> tuple[dict, ...]:
    head = ({"role": "system", "content": system},) if system else ()
    return (*head, {"role": "user", "content": text})


PROMPTS = [
    _msgs("Hi"),
    _msgs("Write a long and detailed essay about the history of the printing press in Europe, with dates."),
    _msgs("Sort these numbers: 5, 3, 9, 1", system="You are terse."),
    _msgs("Why is the sky blue?"),
    _msgs("Translate 'good morning' into French, German, Spanish, Italian and Portuguese, one per line."),
    _msgs("ok"),
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = TransformersBackend(tiny_model_dir, batch_size=4, device="cpu")
    b.load()
    return b


def _ids(backend, messages) -> list[int]:
    enc = backend._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def test_row_seed_gives_same_text_alone_or_in_mixed_batch(backend):
    reqs = [GenerationRequest(p, SAMPLED, seed=100 + i) for i, p in enumerate(PROMPTS)]
    batched = backend.generate(reqs)  # 6 rows of mixed lengths, batch_size 4: padded, sorted, split
    alone = [backend.generate([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    # a different batch mate and order does not change a row either
    pair = backend.generate([reqs[3], reqs[1]])
    assert [r.text for r in pair] == [alone[3].text, alone[1].text]
    assert all(r.text for r in batched)


def test_same_seed_same_text_different_seeds_differ(backend):
    prompt = PROMPTS[3]
    reqs = [GenerationRequest(prompt, SAMPLED, seed=s) for s in (7, 7, 1, 2, 3, 4)]
    out = [r.text for r in backend.generate(reqs)]
    assert out[0] == out[1]
    assert len(set(out[1:])) > 1  # several seeds, not all the same draw
    assert backend.generate([reqs[0]])[0].text == out[0]


def test_identical_requests_in_one_batch_sample_identically(backend):
    req = GenerationRequest(PROMPTS[0], SAMPLED, seed=5)
    out = backend.generate([req, req, req])
    assert out[0].text == out[1].text == out[2].text


def test_temperature_zero_is_greedy_and_deterministic(backend):
    import torch

    reqs = [GenerationRequest(PROMPTS[2], GREEDY, seed=s) for s in (1, 2)]
    a, b = backend.generate(reqs)
    assert a.text == b.text  # the seed does not matter when greedy
    assert backend.generate([reqs[0]])[0].text == a.text

    # greedy by hand: argmax of a plain forward, token by token
    ids = _ids(backend, PROMPTS[2])
    x = torch.tensor([ids])
    new = []
    with torch.inference_mode():
        for _ in range(GREEDY.max_new_tokens):
            nxt = int(backend._model(input_ids=x).logits[0, -1].argmax())
            if nxt == backend._tokenizer.eos_token_id:
                break
            new.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    assert a.text == backend._tokenizer.decode(new, skip_special_tokens=True).strip()


def test_finish_reason_length_and_token_counts(backend):
    params = [SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=n) for n in (3, 7)]
    reqs = [GenerationRequest(p, params[i % 2], seed=i) for i, p in enumerate(PROMPTS)]
    out = backend.generate(reqs)
    for req, res in zip(reqs, out, strict=True):
        assert res.ok
        assert res.completion_tokens <= req.sampling.max_new_tokens
        assert res.prompt_tokens == len(_ids(backend, req.messages))
        if res.finish_reason == "length":
            assert res.completion_tokens == req.sampling.max_new_tokens
        else:
            assert res.finish_reason == "stop"
    # a random 49k-vocab model almost never emits EOS within a few tokens
    assert sum(r.finish_reason == "length" for r in out) >= len(out) - 1
    assert backend.generate([]) == []


def _hand_logprob(backend, messages, choice: str) -> float:
    import torch

    prompt = _ids(backend, messages)
    choice_ids = backend._tokenizer(choice, add_special_tokens=False)["input_ids"]
    x = torch.tensor([prompt + choice_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(backend._model(input_ids=x).logits[0].float(), dim=-1)
    return float(sum(logp[len(prompt) + k - 1, tok] for k, tok in enumerate(choice_ids)))


def test_score_matches_hand_forward_and_ignores_batch(backend):
    assert len(backend._tokenizer("Yes", add_special_tokens=False)["input_ids"]) == 1
    assert len(backend._tokenizer("Absolutely certain", add_special_tokens=False)["input_ids"]) > 1
    choices = ("Yes", "Absolutely certain", "No")
    target = ScoreRequest(PROMPTS[1], choices)
    expected = [_hand_logprob(backend, PROMPTS[1], c) for c in choices]
    assert len(set(expected)) == 3

    alone = backend.score([target])[0]
    assert alone.ok and alone.prompt_tokens == len(_ids(backend, PROMPTS[1]))
    assert alone.logprobs == pytest.approx(expected, abs=1e-4)

    # with mates of other lengths and other choice lengths (different padding and logits_to_keep)
    mates = [
        ScoreRequest(PROMPTS[0], ("10", "No")),
        ScoreRequest(PROMPTS[4], ("a much longer answer choice here",)),
        ScoreRequest(PROMPTS[5], ("Yes",)),
    ]
    batch = backend.score([mates[0], target, mates[1], mates[2]])
    assert batch[1].logprobs == pytest.approx(expected, abs=1e-4)
    assert batch[0].logprobs == pytest.approx([_hand_logprob(backend, PROMPTS[0], c) for c in ("10", "No")], abs=1e-4)
    assert batch[2].logprobs == pytest.approx(
        [_hand_logprob(backend, PROMPTS[4], "a much longer answer choice here")], abs=1e-4
    )
    assert batch[3].logprobs == pytest.approx([_hand_logprob(backend, PROMPTS[5], "Yes")], abs=1e-4)
    assert sum(alone.probs) == pytest.approx(1.0)


def test_missing_local_path_names_the_field(tmp_path):
    backend = TransformersBackend(str(tmp_path / "no-such-model"), field="rewriter_model")
    with pytest.raises(TeamsRLError) as info:
        backend.generate([GenerationRequest(PROMPTS[0], GREEDY)])
    assert info.value.field == "rewriter_model"
    assert "no-such-model" in str(info.value)


def test_existing_folder_without_model_is_a_user_error(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    backend = TransformersBackend(str(empty), field="expert_model")
    with pytest.raises(TeamsRLError) as info:
        backend.generate([GenerationRequest(PROMPTS[0], GREEDY)])
    assert info.value.field == "expert_model"


def test_folder_without_chat_template_falls_back_to_chatml(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    for leftover in folder.glob("chat_template.*"):
        leftover.unlink()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = None
    tok.save_pretrained(folder)
    for leftover in folder.glob("chat_template.*"):
        leftover.unlink()
    assert not AutoTokenizer.from_pretrained(folder).chat_template

    backend = TransformersBackend(str(folder), batch_size=2, device="cpu")
    messages = _msgs("Name three colours.", system="Be brief.")
    res = backend.generate([GenerationRequest(messages, GREEDY)])[0]
    assert backend._tokenizer.chat_template == CHATML_TEMPLATE
    chatml = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName three colours.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert res.prompt_tokens == len(tok(chatml, add_special_tokens=False)["input_ids"])
    assert Path(folder, "config.json").exists()


# -- the prompt-prefix cache ---------------------------------------------------------------------------------------
FEW_SHOT = (
    "You rewrite instructions so that they ask for more, and you answer with the rewritten instruction only. "
    "Keep the topic and the task; add one concrete requirement."
)


def _few_shot(text: str, system: str = FEW_SHOT) -> tuple[dict, ...]:
    return (
        {"role": "system", "content": system},
        {"role": "user", "content": "Instruction: Describe a cat."},
        {"role": "assistant", "content": "Describe a cat in three sentences, naming its colour and its habits."},
        {"role": "user", "content": f"Instruction: {text}"},
    )


SHARED = [
    _few_shot("List three fruits."),
    _few_shot("Explain how a bicycle gear works, step by step, for a child of eight."),
    _few_shot("Why is the sea salty?", system=FEW_SHOT + " Never use bullet points."),  # another, longer prefix
    PROMPTS[3],  # no prefix at all: its row is all padding in the batch cache
]


@pytest.fixture(scope="module")
def uncached(tiny_model_dir):
    b = TransformersBackend(tiny_model_dir, batch_size=4, device="cpu", prefix_cache=False)
    b.load()
    return b


def test_prefix_cache_changes_no_text_and_is_reused(backend, uncached):
    backend.prefixes._entries.clear()
    hits = backend.prefixes.hits
    split = [backend._split(m) for m in SHARED]
    assert [len(s.prefix) > 0 for s in split] == [True, True, True, False]
    assert split[0].prefix == split[1].prefix != split[2].prefix
    assert all(s.ids == _ids(backend, m) for s, m in zip(split, SHARED, strict=True))

    for params in (GREEDY, SAMPLED):
        reqs = [GenerationRequest(m, params, seed=40 + i) for i, m in enumerate(SHARED)]
        cached = backend.generate(reqs)  # one batch mixing two prefix lengths and a row with none
        assert [r.text for r in cached] == [r.text for r in uncached.generate(reqs)]
        assert [r.text for r in cached] == [backend.generate([r])[0].text for r in reqs]
        assert [r.prompt_tokens for r in cached] == [len(_ids(backend, m)) for m in SHARED]
    assert len(backend.prefixes._entries) == 2  # two distinct prefixes, each computed once
    assert backend.prefixes.hits > hits


def test_prefix_cache_scores_match_hand_forward(backend, uncached):
    choices = ("Yes", "No")  # single tokens: one forward of the prompt scores both
    long_choices = ("Yes", "Absolutely certain")  # one choice of several tokens: a row per choice
    reqs = [ScoreRequest(SHARED[0], choices), ScoreRequest(SHARED[2], long_choices), ScoreRequest(SHARED[3], choices)]
    cached, plain = backend.score(reqs), uncached.score(reqs)
    for req, c, p in zip(reqs, cached, plain, strict=True):
        expected = [_hand_logprob(backend, req.messages, x) for x in req.choices]
        assert c.logprobs == pytest.approx(expected, abs=1e-4)
        assert p.logprobs == pytest.approx(expected, abs=1e-4)
        assert c.prompt_tokens == len(_ids(backend, req.messages))


def test_short_or_changed_prefix_is_not_cached(backend):
    cache = backend.prefixes
    assert cache.split([1, 2, 3], [1, 2, 3, 4, 5]).prefix == ()  # under min_tokens
    long = list(range(100, 140))
    assert cache.split(long, [*long, 7]).prefix == tuple(long)
    assert cache.split(long, [*long[:-1], 9, 7]).prefix == ()  # the full prompt renders the turn differently
    assert cache.split(long, long).prefix == ()  # nothing left to feed


TEMPLATE = "Do not answer the instruction below.\nRewrite it so that it asks for one thing more.\n\nInstruction: {}"


def _templated(text: str) -> tuple[dict, ...]:
    """A few-shot prompt whose user turns all open with the same template lines, as the action prompts do."""
    return (
        {"role": "system", "content": FEW_SHOT},
        {"role": "user", "content": TEMPLATE.format("Describe a cat.")},
        {"role": "assistant", "content": "Describe a cat in three sentences."},
        {"role": "user", "content": TEMPLATE.format("Name a river.")},
        {"role": "assistant", "content": "Name a river in Asia and its length."},
        {"role": "user", "content": TEMPLATE.format(text)},
    )


def test_shared_opening_is_whole_lines_common_to_every_earlier_turn():
    from teams_rl.llm.prefix_cache import shared_opening

    opening = "Do not answer the instruction below.\nRewrite it so that it asks for one thing more.\n\n"
    assert shared_opening(_templated("List three fruits.")) == opening
    assert shared_opening(_templated("Name a river.\nAnd a sea.")) == opening  # equal to one example, not to both
    assert shared_opening(_few_shot("List three fruits.")) == ""  # "Instruction: " ends no line
    assert shared_opening(PROMPTS[2]) == ""  # no earlier user turn


def test_prefix_reaches_into_the_last_turn_and_changes_no_text(backend, uncached):
    prompts = [_templated("List three fruits."), _templated("Explain how a bicycle gear works, step by step.")]
    split = [backend._split(m) for m in prompts]
    turns = backend._template_ids(prompts[0][:-1], False)
    assert split[0].prefix == split[1].prefix and len(split[0].prefix) > len(turns) + 10
    assert all(s.ids == _ids(backend, m) for s, m in zip(split, prompts, strict=True))
    assert backend._tokenizer.decode(split[0].suffix).lstrip().startswith("Instruction: List three fruits.")
    for params in (GREEDY, SAMPLED):
        reqs = [GenerationRequest(m, params, seed=60 + i) for i, m in enumerate([*prompts, SHARED[0]])]
        cached = backend.generate(reqs)
        assert [r.text for r in cached] == [r.text for r in uncached.generate(reqs)]
        assert [r.text for r in cached] == [backend.generate([r])[0].text for r in reqs]


# -- continuous batching --------------------------------------------------------------------------------------------
def test_finished_rows_leave_and_waiting_ones_take_their_slots(backend):
    lengths = (2, 9, 4, 7, 3)
    reqs = [
        GenerationRequest(m, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=n), seed=70 + i)
        for i, (m, n) in enumerate(zip([*SHARED, PROMPTS[1]], lengths, strict=True))
    ]
    seen = []
    slots, backend.batch_size = backend.batch_size, 2  # 5 rows through 2 slots of unequal lengths
    try:
        out = backend.generate(reqs, on_result=lambda i, r: seen.append((i, r)))
    finally:
        backend.batch_size = slots
    assert sorted(i for i, _ in seen) == list(range(len(reqs)))  # each row reported once, as it ended
    assert all(out[i] is r for i, r in seen)
    assert [r.completion_tokens for r in out] == list(lengths)  # a random model runs to each row's own cap
    assert [r.text for r in out] == [backend.generate([q])[0].text for q in reqs]


def test_nucleus_from_the_candidates_equals_the_full_sort(monkeypatch):
    import torch

    from teams_rl.llm import decoding

    torch.manual_seed(0)
    peaked = torch.randn(3, 5000) * 6  # nucleus well inside the top 256
    flat = torch.randn(2, 5000) * 0.1  # nucleus of thousands: the full-sort path
    rows = [decoding.Row(None, 8, 0.7, 0.95, seed) for seed in range(5)]

    def draws(candidates: int) -> list[int]:
        monkeypatch.setattr(decoding, "NUCLEUS_CANDIDATES", candidates)
        logits = torch.cat([peaked, flat])
        return [
            t for seed in range(20) for t in decoding.sample(logits, rows, [torch.Generator().manual_seed(seed)] * 5)
        ]

    assert draws(256) == draws(5000)
    probs = torch.softmax(peaked[0] / 0.7, -1)
    ranked = probs.sort(descending=True)
    nucleus = set(ranked.indices[: int((ranked.values.cumsum(-1) < 0.95).sum()) + 1].tolist())
    assert {draws(256)[5 * k] for k in range(20)} <= nucleus
    greedy = decoding.Row(None, 8, 0.0, 0.95, 0)
    assert decoding.sample(peaked[:1], [greedy], [None]) == [int(peaked[0].argmax())]


def test_nucleus_draws_follow_the_truncated_distribution():
    import torch

    from teams_rl.llm import decoding

    logits = torch.tensor([[2.0, -5.0, 1.0, 0.0, 3.0, -1.0, -4.0]])
    row = decoding.Row(None, 8, 1.0, 0.9, 0)
    probs = torch.softmax(logits[0], -1)
    ranked = probs.sort(descending=True)
    size = int((ranked.values.cumsum(-1) - ranked.values <= 0.9).sum())
    expected = torch.zeros_like(probs).scatter_(0, ranked.indices[:size], ranked.values[:size])
    expected /= expected.sum()
    generator = torch.Generator().manual_seed(0)
    n = 6000
    counts = torch.bincount(
        torch.tensor([decoding.sample(logits, [row], [generator])[0] for _ in range(n)]), minlength=7
    ).double()
    assert counts[expected == 0].sum() == 0  # nothing outside the nucleus
    sigma = (n * expected * (1 - expected)).sqrt()
    assert ((counts - n * expected).abs() <= 4 * sigma + 1).all(), (counts / n, expected)


def test_prefill_runs_in_groups_of_similar_length(backend, monkeypatch):
    from teams_rl.llm import decoding

    monkeypatch.setattr(decoding, "PREFILL_GROUP", 2)
    model = backend._model
    widths, forward = [], model.forward

    def spy(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            widths.append((ids.shape[0], ids.shape[1]))
        return forward(*args, **kwargs)

    reqs = [GenerationRequest(m, SAMPLED, seed=80 + i) for i, m in enumerate(PROMPTS)]
    alone = [backend.generate([r])[0].text for r in reqs]
    monkeypatch.setattr(model, "forward", spy)
    slots, backend.batch_size = backend.batch_size, len(reqs)
    try:
        together = backend.generate(reqs)
    finally:
        backend.batch_size = slots
    assert [rows for rows, _ in widths] == [2, 2, 2]  # six prompts admitted at once, prefilled two by two
    assert [w for _, w in widths] == sorted(w for _, w in widths)  # shortest first: little padding in each
    assert [r.text for r in together] == alone


def test_a_shared_prefix_is_tokenized_once_not_per_request(backend, monkeypatch):
    backend._prefix_ids.clear()
    renders, render = [], backend._tokenizer.apply_chat_template
    monkeypatch.setattr(
        backend._tokenizer, "apply_chat_template", lambda *a, **k: renders.append(1) or render(*a, **k)
    )
    first = backend._split(_templated("List three fruits."))
    assert len(renders) == 3  # the full prompt, the turns before it, the turns with the opening
    later = [backend._split(_templated(t)) for t in ("Name a bird.", "Sort 3, 1, 2.", "Explain rain.")]
    assert len(renders) == 6  # one each: their full prompts
    assert all(s.prefix == first.prefix for s in later)
