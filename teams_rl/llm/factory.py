"""Build a role's backend from its recipe settings; roles naming the same model share one loaded copy."""

from __future__ import annotations

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.base import Backend, SamplingParams
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.prices import role_price
from teams_rl.llm.role_client import Budget, RoleClient

BACKENDS = ("transformers", "openai", "openai_batch", "python")


class BackendPool:
    """Creates backends on demand and reuses one per (backend, model, dtype, url) so two roles on the same
    model load its weights once."""

    def __init__(self):
        self._cache: dict[tuple, Backend] = {}

    def get(self, settings: dict, role: str) -> Backend:
        kind = settings["backend"]
        key = (kind, settings["model"], settings.get("dtype"), settings.get("base_url"))
        if key in self._cache:
            return self._cache[key]
        if kind == "transformers":
            from teams_rl.llm.transformers_backend import TransformersBackend

            backend = TransformersBackend(
                settings["model"],
                dtype=settings.get("dtype", "auto"),
                batch_size=settings.get("batch_size", 8),
                field=f"{role}_model",
            )
        elif kind in ("openai", "openai_batch"):
            from teams_rl.llm.openai_backend import OpenAIBackend

            extra = {}
            cls = OpenAIBackend
            if kind == "openai_batch":  # the same server settings, one Batch job per batch of calls
                from teams_rl.llm.openai_batch import OpenAIBatchBackend

                cls, extra = OpenAIBatchBackend, {"poll_s": settings.get("batch_poll_s", 30.0)}
            backend = cls(
                settings["model"],
                base_url=settings.get("base_url"),
                api_key_env=settings.get("api_key_env", "OPENAI_API_KEY"),
                concurrency=settings.get("batch_size", 16),
                timeout_s=settings.get("timeout_s", 120.0),
                role=role,
                **extra,
            )
        elif kind == "python":
            backend = _import_backend(settings["model"], role)
        elif kind == "vllm":
            # The protocol fits an in-process vLLM engine (batched generate, prompt logprobs for score), but it
            # is not written yet; a vLLM server behind the openai backend gives the same throughput today.
            raise TeamsRLError(
                "the in-process vllm backend is not available yet: run `vllm serve MODEL` and set "
                f"{role}_backend: openai and {role}_base_url: http://HOST:8000/v1",
                field=f"{role}_backend",
            )
        else:
            raise TeamsRLError(
                f"unknown backend '{kind}' (choose from {', '.join(BACKENDS)})", field=f"{role}_backend"
            )
        self._cache[key] = backend
        return backend

    def client(self, settings: dict, role: str, ledger: Ledger) -> RoleClient:
        """The role's backend behind the ledger, with the role's budget."""
        budget = Budget(
            max_calls=settings.get("max_calls"), max_tokens=settings.get("max_tokens"), max_usd=settings.get("max_usd")
        )
        price = role_price(settings, role)
        return RoleClient(self.get(settings, role), ledger, role, budget, price)


def sampling_from(settings: dict, **override) -> SamplingParams:
    values = {"temperature": settings["temperature"], "top_p": settings["top_p"], **override}
    if "max_new_tokens" not in values:  # a role may leave its length to a shared key (rewrite_max_new_tokens)
        values["max_new_tokens"] = settings["max_new_tokens"]
    return SamplingParams(**values)


def _import_backend(ref: str, role: str) -> Backend:
    """``backend: python`` with ``model: package.module:factory``: an in-process backend of your own (a client for
    an API we do not wrap, a replay of recorded answers, the scripted backends of the tests). ``factory()``
    returns an object with ``model_id``, ``generate`` and (for logprob reviewers) ``score``."""
    import importlib

    module, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr) if attr else None
    except (ImportError, AttributeError) as err:
        raise TeamsRLError(f"cannot import backend factory '{ref}': {err}", field=f"{role}_model") from None
    if factory is None:
        raise TeamsRLError(f"expected 'package.module:factory', got '{ref}'", field=f"{role}_model")
    return factory()
