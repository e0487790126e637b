"""Membership inference: the AUC arithmetic by hand, and real signals from a tiny model that memorised its members."""

import numpy as np
import pytest

from teams_rl.evaluate import privacy as privacy


def test_roc_auc_by_hand():
    assert privacy.roc_auc([3, 4], [1, 2]) == 1.0
    assert privacy.roc_auc([1, 2], [3, 4]) == 0.0
    # pairs (pos, neg): (2,1) win, (2,3) loss, (5,1) win, (5,3) win -> 3/4
    assert privacy.roc_auc([2, 5], [1, 3]) == pytest.approx(0.75)
    assert privacy.roc_auc([1, 1], [1, 1]) == pytest.approx(0.5)  # ties count half
    assert privacy.roc_auc([2, 1], [1]) == pytest.approx(0.75)  # (2,1) win, (1,1) tie


def test_roc_curve_and_bootstrap():
    fpr, tpr = privacy.roc_curve([3, 4], [1, 2])
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert tpr[2] == 1.0 and fpr[2] == 0.0  # both positives above every negative: a perfect corner
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    low, high = privacy.bootstrap_auc(pos, neg, iters=300, seed=1)
    auc = privacy.roc_auc(pos, neg)
    assert low < auc < high and 0.6 < auc < 0.9
    assert privacy.bootstrap_auc(pos, neg, iters=300, seed=1) == (low, high)  # seeded


def test_min_k_score_takes_the_least_likely_tokens():
    assert privacy.min_k_score([-1.0, -2.0, -3.0, -10.0, -0.5], k=0.2) == -10.0
    assert privacy.min_k_score([-1.0, -2.0, -3.0, -4.0], k=0.5) == pytest.approx(-3.5)


def test_to_pairs_renders_the_answer_as_the_template_writes_it(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rows = [
        {"prompt": [{"role": "user", "content": "Say hi."}], "completion": [{"role": "assistant", "content": "Hi!"}]},
        {"text": "plain"},
    ]
    (context, target), plain = privacy.to_pairs(rows, tok)
    assert context.endswith("<|im_start|>assistant\n") and "Say hi." in context
    assert target.startswith("Hi!<|im_end|>")
    assert plain == ("", "plain")


def _random_texts(rng, n, vocab):
    return [" ".join(rng.choice(vocab, size=12)) for _ in range(n)]


VOCAB = [
    "river",
    "stone",
    "lamp",
    "orange",
    "violin",
    "cloud",
    "seven",
    "market",
    "ladder",
    "quiet",
    "copper",
    "window",
    "garden",
    "thunder",
    "pencil",
    "harbor",
    "basket",
    "silver",
    "meadow",
    "engine",
    "candle",
    "forest",
    "mirror",
    "planet",
]


def test_membership_auc_near_one_when_the_model_memorised_its_members(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = np.random.default_rng(0)
    members, others = _random_texts(rng, 8, VOCAB), _random_texts(rng, 8, VOCAB)
    batch = tok(members, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    pairs = privacy.to_pairs([{"text": t} for t in members + others], tok)
    scores = privacy.membership_scores(model, tok, pairs, batch_size=4)
    report = privacy.membership_auc(
        {k: v[:8] for k, v in scores.items()}, {k: v[8:] for k, v in scores.items()}, iters=200
    )
    assert report["neg_loss"]["auc"] >= 0.95
    assert report["min_k"]["auc"] >= 0.9
    assert report["neg_loss"]["mean_member"] > report["neg_loss"]["mean_non_member"]


def test_membership_auc_near_half_for_an_untrained_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = np.random.default_rng(1)
    texts = _random_texts(rng, 120, VOCAB)  # "members" and "non-members" are the same kind of text, never trained on
    scores = privacy.membership_scores(model, tok, privacy.to_pairs([{"text": t} for t in texts], tok), batch_size=16)
    report = privacy.membership_auc(
        {k: v[:60] for k, v in scores.items()}, {k: v[60:] for k, v in scores.items()}, iters=200
    )
    for signal in ("neg_loss", "min_k"):
        auc, (low, high) = report[signal]["auc"], report[signal]["ci95"]
        assert 0.35 < auc < 0.65  # chance, give or take ~3 standard errors at 60 vs 60
        assert low < auc < high and high - low < 0.4


def test_token_logprobs_score_only_the_target(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    target = " the answer"
    n_target = len(tok(target, add_special_tokens=False)["input_ids"])
    short, long = privacy.token_logprobs(
        model, tok, [("Q:", target), ("A much longer question here:", target)], batch_size=2
    )
    assert len(short) == len(long) == n_target  # padding and context length do not change what is scored
    alone = privacy.token_logprobs(model, tok, [("Q:", target)], batch_size=1)[0]
    np.testing.assert_allclose(alone, short, atol=1e-4)  # right padding in a batch changes nothing


def test_read_rows_accepts_the_usual_formats(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"text": "a"}\n{"instruction": "Do", "input": "x", "response": "ok"}\n{"prompt": "p", "completion": "c"}\n',
        encoding="utf-8",
    )
    rows = privacy.read_rows(path)
    assert rows[0] == {"text": "a"}
    assert rows[1]["prompt"][0]["content"] == "Do\n\nx" and rows[1]["completion"][0]["content"] == "ok"
    assert rows[2]["completion"] == [{"role": "assistant", "content": "c"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"question": "?"}\n', encoding="utf-8")
    with pytest.raises(privacy.TeamsRLError, match="line|needs"):
        privacy.read_rows(bad)
    assert privacy.sample_rows(list(range(10)), 4, seed=0) == privacy.sample_rows(list(range(10)), 4, seed=0)
    assert len(privacy.sample_rows(list(range(10)), 4, seed=0)) == 4


def _results(**tuned):
    signal = {"members": 5, "non_members": 5}
    return {
        "privacy": {
            "models": {
                "base": {"neg_loss": {"auc": 0.9, "ci95": [0.7, 1.0], **signal}},
                "tuned": {name: {"auc": auc, "ci95": list(ci), **signal} for name, (auc, ci) in tuned.items()},
            }
        }
    }


def test_the_privacy_verdict_names_the_tuned_signals_whose_interval_excludes_chance():
    from teams_rl.evaluate.report import privacy_verdict

    leak = privacy_verdict(_results(neg_loss=(0.52, (0.2, 0.88)), neg_loss_vs_base=(0.96, (0.84, 1.0))))
    assert "loss - base loss (AUC 0.960, 95% 0.840-1.000)" in leak and "better than chance" in leak
    assert "loss (AUC 0.520" not in leak
    # the base model is the control: its high AUC is not the tuned model's leak
    none = privacy_verdict(_results(neg_loss=(0.52, (0.2, 0.88)), min_k=(0.6, (0.5, 0.9))))
    assert none.startswith("No signal of the tuned model") and "AUC" not in none.split(";")[0]
