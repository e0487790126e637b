"""Dollars per role: prices from recipe keys or a price table, dollars stored per call (Batch discount included),
the dollar budget, ledgers older than prices, and ``teams-rl ledger`` summing a run's ledgers."""

import json
import sqlite3
import subprocess
import sys

import pytest

from teams_rl.core.errors import BudgetExhausted, TeamsRLError
from teams_rl.env.dataset import load_rows
from teams_rl.llm.base import GenerationRequest, SamplingParams
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.prices import Price, load_price_table, role_price
from teams_rl.llm.role_client import Budget, RoleClient
from teams_rl.llm.scripted import ScriptedBackend
from teams_rl.llm.tables import dollars, ledger_markdown, run_totals
from teams_rl.synthesize import run as synth_mod

PRICE = Price(input=2.0, output=8.0, batch_discount=0.5)


def _reqs(n: int, start: int = 0) -> list[GenerationRequest]:
    return [
        GenerationRequest(({"role": "user", "content": f"one two three {i}"},), SamplingParams(), seed=i)
        for i in range(start, start + n)
    ]


def _backend(batch_route: bool = False) -> ScriptedBackend:
    backend = ScriptedBackend(lambda req: "four five six seven", model_id="priced-model")
    backend.batch_route = batch_route
    return backend


def _cost(tokens_in: int, tokens_out: int, batch: bool = False) -> float:
    return (tokens_in * 2.0 + tokens_out * 8.0) / 1e6 * (0.5 if batch else 1.0)


def test_price_cost_and_batch_discount():
    assert PRICE.cost(1_000_000, 0) == pytest.approx(2.0)
    assert PRICE.cost(0, 1_000_000) == pytest.approx(8.0)
    assert PRICE.cost(500_000, 250_000, batch=True) == pytest.approx((1.0 + 2.0) * 0.5)


def test_role_price_from_recipe_keys():
    assert role_price({"usd_per_mtok_in": None, "usd_per_mtok_out": None}, "expert") is None
    price = role_price({"usd_per_mtok_in": 0.15, "usd_per_mtok_out": 0.6, "batch_discount": 0.5}, "expert")
    assert price == Price(0.15, 0.6, 0.5)
    with pytest.raises(TeamsRLError) as half:
        role_price({"usd_per_mtok_in": 0.15, "usd_per_mtok_out": None}, "expert")
    assert half.value.field == "expert_usd_per_mtok_out"
    with pytest.raises(TeamsRLError) as budget:
        role_price({"usd_per_mtok_in": None, "usd_per_mtok_out": None, "max_usd": 5.0}, "reviewer")
    assert budget.value.field == "reviewer_max_usd" and "reviewer_usd_per_mtok_in" in budget.value.message


def test_each_call_is_stored_with_its_dollars_and_the_batch_discount(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    direct = RoleClient(_backend(), ledger, "expert", price=PRICE)
    results = direct.generate(_reqs(3))
    tokens_in, tokens_out = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
    assert tokens_in > 0 and tokens_out > 0
    assert direct.stats.usd == pytest.approx(_cost(tokens_in, tokens_out))

    batch = RoleClient(_backend(batch_route=True), ledger, "reviewer", price=PRICE)
    batch.generate(_reqs(3))
    assert batch.stats.usd == pytest.approx(_cost(tokens_in, tokens_out, batch=True))

    again = RoleClient(_backend(), ledger, "expert", price=PRICE)
    again.generate(_reqs(3))
    assert again.stats.cached_calls == 3 and again.stats.usd == 0.0  # the ledger's answers cost nothing new

    totals = ledger.totals()
    assert totals["expert"].usd == pytest.approx(_cost(tokens_in, tokens_out))
    assert totals["reviewer"].usd == pytest.approx(_cost(tokens_in, tokens_out) / 2)
    assert totals["expert"].unpriced_calls == 0
    groups = {(g["role"], g["batch"]): g for g in ledger.spend_by_model()}
    assert groups[("reviewer", True)]["calls"] == 3 and groups[("expert", False)]["model"] == "priced-model"
    ledger.close()
    card = ledger_markdown(tmp_path)  # what the pipeline report and the dataset card show
    assert "USD" in card and f"${_cost(tokens_in, tokens_out):,.4f}" in card


def test_dollar_budget_stops_before_the_next_batch(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    per_batch = RoleClient(_backend(), ledger, "expert", price=PRICE).generate(_reqs(2))
    spent = _cost(sum(r.prompt_tokens for r in per_batch), sum(r.completion_tokens for r in per_batch))
    backend = _backend()
    client = RoleClient(backend, ledger, "expert", Budget(max_usd=spent * 1.5), price=PRICE)
    client.generate(_reqs(2, start=10))  # spent < max: admitted, and it passes the cap by less than one batch
    with pytest.raises(BudgetExhausted, match="USD spent, max_usd="):
        client.generate(_reqs(2, start=20))
    assert backend.generate_calls == 2
    assert client.generate(_reqs(2)) and backend.generate_calls == 2  # answers the ledger holds stay free
    ledger.close()


def test_a_ledger_written_before_prices_opens_and_counts_its_calls_as_unpriced(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE calls (key TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, "
        "request TEXT NOT NULL, response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER "
        "NOT NULL, latency_s REAL NOT NULL, finish_reason TEXT, created REAL NOT NULL);"
    )
    db.execute("INSERT INTO calls VALUES ('k', 'expert', 'm', 'generate', '{}', '{}', 10, 5, 0.1, 'stop', 0)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.totals()["expert"].unpriced_calls == 1
    RoleClient(_backend(), ledger, "expert", price=PRICE).generate(_reqs(1))
    totals = ledger.totals()["expert"]
    assert totals.calls == 2 and totals.unpriced_calls == 1 and totals.usd > 0
    ledger.close()
    assert dollars(totals.usd, totals.calls, totals.unpriced_calls).endswith("+ 1 unpriced calls")


def test_price_table_yaml_and_its_errors(tmp_path):
    good = tmp_path / "prices.yaml"
    good.write_text("# USD per million tokens\ngpt-x:\n  input: 0.15\n  output: 0.60\n", encoding="utf-8")
    assert load_price_table(good) == {"gpt-x": Price(0.15, 0.6, 0.5)}
    cases = {
        "gpt-x:\n  input: 0.15\n  ouput: 0.6\n": (3, "gpt-x.ouput", "unknown key"),
        "gpt-x:\n  input: cheap\n  output: 0.6\n": (2, "gpt-x.input", "expected a number"),
        "gpt-x:\n  input: 0.1\n": (1, "gpt-x", "missing output"),
        "gpt-x:\n  input: 0.1\n  output: 0.2\n  batch_discount: 2\n": (4, "gpt-x.batch_discount", "between 0 and 1"),
    }
    for text, (line, field, message) in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(TeamsRLError) as err:
            load_price_table(bad)
        assert (err.value.line, err.value.field) == (line, field) and message in err.value.message
        assert str(err.value).startswith(f"{bad}:{line}: {field}: ")


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "teams_rl.cli", "ledger", *argv], capture_output=True, text=True, timeout=120
    )


def test_ledger_command_sums_shard_ledgers_and_prices_afterwards(tmp_path):
    run = tmp_path / "run"
    for part in ("0-of-2", "1-of-2"):  # a Ray run keeps one ledger per shard and none at the top
        ledger = Ledger(run / "shards" / part / "ledger.sqlite")
        RoleClient(_backend(), ledger, "expert").generate(_reqs(2, start=0 if part == "0-of-2" else 2))
        ledger.close()
    totals, unpriced = run_totals(run)
    assert totals["expert"].calls == 4 and unpriced == {"priced-model": 4}
    shown = _cli(str(run))
    assert shown.returncode == 0, shown.stderr
    assert "USD" in shown.stdout and "unpriced" in shown.stdout and "No price for priced-model" in shown.stdout

    table = tmp_path / "prices.yaml"
    table.write_text("priced-model:\n  input: 2.0\n  output: 8.0\n", encoding="utf-8")
    priced = _cli(str(run), "--prices", str(table))
    assert priced.returncode == 0, priced.stderr
    tokens = totals["expert"]
    expected = _cost(tokens.prompt_tokens, tokens.completion_tokens)
    assert f"${expected:,.4f}" in priced.stdout and "No price" not in priced.stdout
    assert "| unpriced |" in ledger_markdown(run)  # the report and the card: an unpriced role says so

    table.write_text("priced-model:\n  input: 2.0\n  output: lots\n", encoding="utf-8")
    bad = _cli(str(run), "--prices", str(table))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"error: {table}:3: priced-model.output: expected a number, got 'lots'"
    )


def test_synthesis_with_a_dollar_budget_stops_cleanly_and_keeps_its_rows(tmp_path, backend):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"id": f"s{i}", "instruction": f"Explain idea {i} to a child."}) + "\n" for i in range(9)),
        encoding="utf-8",
    )
    argv = ["--dataset_name", str(seeds), "--depth", "1", "--chunk_size", "3", "--reviewer_modes", "judge_logprob:1"]
    prices = ["--expert_usd_per_mtok_in", "3", "--expert_usd_per_mtok_out", "15"]
    full = synth_mod.main([*argv, "--output_dir", str(tmp_path / "full"), *prices])
    expert = next(c for c in full["calls"] if c["role"] == "expert" and c["purpose"] == "answer")
    assert expert["usd"] > 0 and full["stopped"] is None
    total = Ledger(tmp_path / "full" / "ledger.sqlite")
    spent = total.totals()["expert"].usd
    total.close()

    cap = spent * 0.6  # the first two of three chunks (the first keeps no row)
    capped = synth_mod.main([*argv, "--output_dir", str(tmp_path / "capped"), *prices, "--expert_max_usd", str(cap)])
    assert capped["stopped"] and "max_usd" in capped["stopped"]
    assert 0 < capped["seeds_done"] < 9
    rows = load_rows(tmp_path / "capped" / "dataset")[0]
    assert len(rows) == capped["rows"] > 0
    by_id = {r["id"]: r for r in load_rows(tmp_path / "full" / "dataset")[0]}
    assert all(r == by_id[r["id"]] for r in rows)  # what it finished is kept as the full run made it
    ledger = Ledger(tmp_path / "capped" / "ledger.sqlite")
    assert cap <= ledger.totals()["expert"].usd < spent
    ledger.close()


def test_the_openai_batch_recipe_parses_and_prices_its_expert():
    from pathlib import Path

    from teams_rl.core.recipes import parse_args, role_settings

    recipe = Path(__file__).parents[1] / "recipes" / "llama-3.1-8b" / "synthesize" / "config_openai_batch.yaml"
    (_, args, expert_args, *_), _ = parse_args(synth_mod.ARGUMENTS, ["--config", str(recipe)], "teams-rl synthesize")
    expert = role_settings(expert_args, "expert")
    assert expert["backend"] == "openai_batch" and expert["max_usd"] == 20.0
    assert role_price(expert, "expert") == Price(0.15, 0.60, 0.5)


def test_ledger_command_opens_each_ledger_once_and_shows_its_batch_jobs(tmp_path, monkeypatch):
    from rich.console import Console

    from teams_rl.llm import tables

    run = tmp_path / "run"
    for part in ("0-of-2", "1-of-2"):
        ledger = Ledger(run / "shards" / part / "ledger.sqlite")
        RoleClient(_backend(), ledger, "expert").generate(_reqs(1, start=0 if part == "0-of-2" else 1))
        ledger.record_batch_job(f"fp-{part}", "expert", "priced-model", f"batch-{part}", 1)
        ledger.close()
    opened = []

    class Counting(Ledger):
        def __init__(self, path, *a, **k):
            opened.append(str(path))
            super().__init__(path, *a, **k)

    monkeypatch.setattr(tables, "Ledger", Counting)
    console = Console(record=True, width=120)
    tables.print_ledger(run, console=console)
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 2
    assert "Batch jobs: 2" in console.export_text()
