"""Publishing: upload a run's dataset or model to the Hugging Face Hub with an honest card, private by default.
The token is huggingface_hub's business (HF_TOKEN or ``hf auth login``): it is never taken, passed or written here."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import HUB_FILE, ROWS_FILE
from teams_rl.env.dataset import load_rows
from teams_rl.hub import cards
from teams_rl.hub.runs import find_dataset, find_model, read_pushes, record_push, repo_url

logger = logging.getLogger(__name__)

_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")


# --- Hub access ------------------------------------------------------------------------------------------------------
def _require_token() -> None:
    """Fail before any request when the Hub is switched off or no login is known (only whether a token exists)."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise TeamsRLError("HF_HUB_OFFLINE is set: pushing needs the Hub, unset it for this command")
    if not get_token():
        raise TeamsRLError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (teams-rl never takes a token "
            "on the command line)"
        )


def _refuse_secrets(paths: Iterable[Path | bytes], texts: Iterable[str] = ()) -> None:
    """Never upload the Hub token or an API key (``secrets.secret_values``): a recipe or log that captured one stops
    the push (weights are not read)."""
    from huggingface_hub import get_token

    needles = [v.encode() for v in dict.fromkeys([get_token() or "", *secrets.secret_values()]) if v]
    if not needles:
        return
    for path in paths:
        if isinstance(path, Path) and path.is_file() and path.stat().st_size < 64 << 20:
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                raise TeamsRLError(
                    "this file holds your Hub token or an API key: refusing to upload it", file=str(path)
                )
    if any(needle in text.encode() for text in texts for needle in needles):
        raise TeamsRLError("a card would hold your Hub token or an API key: refusing to upload it")


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """A refused or failed request becomes one line naming the repo (never a traceback, never a header)."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, OSError) and not type(err).__module__.startswith(_NETWORK_MODULES):
            raise
        reason = " ".join(str(err).split())[:300]
        raise TeamsRLError(f"push to {repo_id} (revision {revision or 'main'}) failed: {reason}") from None


def _guard(api, repo_id: str, kind: str, revision: str | None, overwrite: bool, private: bool) -> bool:
    """Refuse to replace an earlier push at this revision unless ``overwrite``. Returns the repo's visibility."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.repo_info(repo_id, repo_type=kind)
    except RepositoryNotFoundError:
        return private
    try:
        files = (
            api.list_repo_files(repo_id, repo_type=kind, revision=revision)
            if revision
            else [s.rfilename for s in info.siblings or []]
        )
    except RevisionNotFoundError:
        files = []
    held = [f for f in files if f != ".gitattributes"]
    if held and not overwrite:
        raise TeamsRLError(
            f"{kind} repo {repo_id} already holds a push at revision '{revision or 'main'}' "
            f"({len(held)} files{', README.md' if 'README.md' in held else ''}): pass --overwrite to "
            "replace it, or push to another --revision"
        )
    if bool(info.private) != private:
        logger.warning(
            "%s already exists and is %s; its visibility is left as it is",
            repo_id,
            "private" if info.private else "public",
        )
    return bool(info.private)


def _prepare(api, repo_id: str, kind: str, revision: str | None, private: bool, message: str) -> None:
    """Create the repo and branch if missing, and empty the revision of an earlier push (but .gitattributes): an
    overwrite starts clean, and ``push_to_hub`` would otherwise merge the old card's features into the new one."""
    from huggingface_hub import CommitOperationDelete

    api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=kind, exist_ok=True)
    stale = [p for p in api.list_repo_files(repo_id, repo_type=kind, revision=revision) if p != ".gitattributes"]
    if stale:
        api.create_commit(
            repo_id,
            [CommitOperationDelete(p) for p in stale],
            repo_type=kind,
            revision=revision,
            commit_message=f"{message}: remove the earlier push",
        )


def _commit(
    api,
    repo_id: str,
    kind: str,
    revision: str | None,
    files: dict[str, Path | bytes],
    message: str,
    parent: str | None = None,
):
    """One commit adding ``files`` (path in repo -> local file or bytes)."""
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path, data if isinstance(data, bytes) else str(data)) for path, data in files.items()]
    return api.create_commit(
        repo_id, ops, commit_message=message, repo_type=kind, revision=revision, parent_commit=parent
    )


def _done(root: Path, kind: str, repo_id: str, revision: str | None, commit: str, private: bool, source: Path) -> dict:
    entry = {
        "repo_id": repo_id,
        "revision": revision or "main",
        "commit": commit,
        "url": repo_url(kind, repo_id, revision),
        "private": private,
        "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(source),
    }
    entry = secrets.mask_data(entry)  # hub.json: an endpoint or a path could carry credentials
    record_push(root, kind, entry)
    logger.info("pushed %s to %s (commit %s); recorded in %s", source, entry["url"], commit[:12], root / HUB_FILE)
    return entry


# --- Dataset ---------------------------------------------------------------------------------------------------------
def push_dataset(
    run_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    public: bool = False,
    overwrite: bool = False,
    message: str | None = None,
    metrics: bool = True,
) -> dict:
    """Upload the rows with ``Dataset.push_to_hub``, then the card, recipes, rejected rows, summary and plots in one
    more commit. Writes ``hub.json`` in the run folder and returns its entry."""
    from huggingface_hub import DatasetCard, HfApi

    run = find_dataset(run_dir)
    rows, _, summary = load_rows(run.folder)
    if not rows:
        raise TeamsRLError("the dataset has no rows: nothing to push", file=str(run.folder))
    _require_token()
    api = HfApi()
    with _hub_errors(repo_id, revision):  # before the card's work: a refused push should not wait for metrics
        private = _guard(api, repo_id, "dataset", revision, overwrite, not public)
    table = _table(run.folder, rows)
    message = message or f"Upload teams-rl dataset ({run.root.name})"
    title = repo_id.split("/")[-1]
    with tempfile.TemporaryDirectory(prefix="teams-rl-push-") as tmp:
        files: dict[str, Path | bytes] = {}
        cards.attach(files, ".", [run.folder / "rejected.jsonl", run.folder / "summary.json"])
        body, seeds_ours = cards.dataset_card(
            run.root,
            run.folder,
            rows,
            summary,
            title=title,
            files=files,
            plots_dir=Path(tmp) / "plots",
            compute_metrics=metrics,
        )
        _refuse_secrets([run.folder / ROWS_FILE, *files.values()], [body])
        with _hub_errors(repo_id, revision):
            _prepare(api, repo_id, "dataset", revision, not public, message)
            first = table.push_to_hub(repo_id, revision=revision, private=not public, commit_message=message)
            card = DatasetCard.load(
                api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=first.oid, cache_dir=tmp)
            )
            cards.dataset_metadata(card.data, n_rows=len(rows), title=title, seeds_ours=seeds_ours)
            card.text = body
            files["README.md"] = secrets.mask(str(card)).encode()
            done = _commit(
                api, repo_id, "dataset", revision, files, f"{message}: card, recipes, plots", parent=first.oid
            )
    return _done(run.root, "dataset", repo_id, revision, done.oid, private, run.folder)


def _table(folder: Path, rows: list[dict]):
    """The saved ``datasets`` table (every lineage column as written), else one built from rows.jsonl."""
    import datasets

    try:
        table = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError):
        table = datasets.Dataset.from_list(rows)
    if len(table) != len(rows):
        raise TeamsRLError(
            f"the datasets files hold {len(table)} rows but rows.jsonl {len(rows)}: the folder is "
            "inconsistent, re-run synthesize or merge",
            file=str(folder),
        )
    return table


# --- Model -----------------------------------------------------------------------------------------------------------
def push_model(
    run_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    public: bool = False,
    overwrite: bool = False,
    message: str | None = None,
    merged: bool = False,
    dataset_repo_id: str | None = None,
    dataset_revision: str | None = None,
) -> dict:
    """Upload the adapter (or full / merged model) with its SFT card extended: the dataset on the Hub, the eval
    table, the recipes and plots; one commit. Writes ``hub.json`` in the run folder and returns its entry."""
    from huggingface_hub import HfApi

    from teams_rl.sft.card import read_facts
    from teams_rl.sft.weights import verify_weights

    run = find_model(run_dir, merged)
    facts = read_facts(run.folder)
    if dataset_revision and not dataset_repo_id:
        raise TeamsRLError("--dataset-revision needs --dataset-repo-id")
    verify_weights(run.folder)
    _require_token()
    api = HfApi()
    with _hub_errors(repo_id, revision):
        private = _guard(api, repo_id, "model", revision, overwrite, not public)
    dataset = (
        {
            "repo_id": dataset_repo_id,
            "revision": dataset_revision,
            "commit": None,
            "url": repo_url("dataset", dataset_repo_id, dataset_revision),
        }
        if dataset_repo_id
        else read_pushes(run.root).get("dataset")
    )
    files: dict[str, Path | bytes] = {}  # the weights folder as it is, minus its card, hidden files and pickles
    for path in sorted(run.folder.rglob("*")):
        rel = path.relative_to(run.folder)
        if (
            path.is_file()
            and path.name not in ("README.md", "training_args.bin")
            and not any(part.startswith(".") for part in rel.parts)
        ):
            files[rel.as_posix()] = path
    sft = run.sft or run.root
    evaluation, eval_plots, eval_recipe = cards.evaluation(dict.fromkeys(f / "eval" for f in (run.root, sft)))
    recipes = cards.attach(
        files, "recipes", [sft / "config" / "sft.yaml", run.root / "config" / "sft.yaml", eval_recipe]
    )
    plots = cards.attach(files, "plots", [sft / "plots" / "loss.png", *eval_plots])
    card = cards.model_card(
        facts,
        repo_id=repo_id,
        revision=revision,
        dataset=dataset,
        evaluation=evaluation,
        plots=plots,
        recipes=recipes,
        library="peft" if (run.folder / "adapter_config.json").is_file() else "transformers",
    )
    _refuse_secrets(files.values(), [card])
    files["README.md"] = card.encode()
    message = message or f"Upload teams-rl model ({run.root.name})"
    with _hub_errors(repo_id, revision):
        _prepare(api, repo_id, "model", revision, not public, message)
        done = _commit(api, repo_id, "model", revision, files, message)
    return _done(run.root, "model", repo_id, revision, done.oid, private, run.folder)
