"""The instructor LLM as a policy: its state prompt, its one-number answer, the logit mask that keeps it on the
menu, and ``InstructorPolicy``, which loads a trained instructor and picks actions in synthesis."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.actions import PROMPTS_DIR, Action, PromptSpec, load_prompt
from teams_rl.env.environment import State, derive_seed

POLICY_FILE = "policy.json"
MASK_VALUE = -1e9  # finite, so masked tokens get probability 0 without making entropies nan (0 * -inf)
_ANSWER_RE = re.compile(r"\s*(\d)\s*")


def load_instructor_prompt(path: str | None = None) -> PromptSpec:
    """The state prompt (``prompts/instructor.yaml`` unless ``path`` names another YAML file)."""
    return load_prompt(
        path or "instructor",
        folder=PROMPTS_DIR,
        placeholders=("instruction", "input", "depth", "menu"),
        required=("instruction", "menu"),
    )


class InstructorFormat:
    """How a state is shown to the instructor and how its answer maps back to an action.

    The menu numbers the actions 1..n; the answer is that number as a single token. ``answer_token_ids[i]`` is
    the token of action ``i``; masking every other token makes the first generated token always a valid action,
    in sampling and in the training loss alike.
    """

    def __init__(self, actions: Sequence[Action], tokenizer, prompt: PromptSpec | None = None):
        if not 1 <= len(actions) <= 9:
            raise TeamsRLError(f"the instructor's menu takes 1 to 9 actions, got {len(actions)}", field="actions")
        self.actions = list(actions)
        self.names = [a.name for a in actions]
        self.tokenizer = tokenizer
        self.prompt = prompt or load_instructor_prompt()
        self.menu = "\n".join(f"{i}. {a.name.replace('_', ' ')}: {a.description}" for i, a in enumerate(actions, 1))
        ids = [tokenizer.encode(str(i), add_special_tokens=False) for i in range(1, len(actions) + 1)]
        if any(len(t) != 1 for t in ids):
            raise TeamsRLError("the instructor's tokenizer splits a menu digit into several tokens", field="model")
        self.answer_token_ids = [t[0] for t in ids]

    def messages(self, state: State) -> tuple[dict, ...]:
        extra = f"Input: {state.input}" if state.input else ""
        return self.prompt.render(instruction=state.instruction, input=extra, depth=str(state.depth), menu=self.menu)

    def prompt_text(self, state: State) -> str:
        return self.tokenizer.apply_chat_template(
            list(self.messages(state)), add_generation_prompt=True, tokenize=False
        )

    def parse(self, answer: str) -> str | None:
        """The action an answer names: exactly one menu digit (surrounding whitespace allowed), else None."""
        match = _ANSWER_RE.fullmatch(answer)
        if not match:
            return None
        index = int(match.group(1)) - 1
        return self.names[index] if 0 <= index < len(self.names) else None

    def action_of_token(self, token_id: int) -> str | None:
        try:
            return self.names[self.answer_token_ids.index(int(token_id))]
        except ValueError:
            return None


def add_action_mask(model, token_ids: Sequence[int]):
    """Make ``model`` able to say only ``token_ids``: a forward hook on its output layer adds ``MASK_VALUE`` to
    every other logit. Returns the hook handle (``.remove()`` undoes it). Works under peft wrappers."""
    import torch

    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if hasattr(head, "weight") else model.config.vocab_size
    bias = torch.full((vocab,), MASK_VALUE)
    bias[list(token_ids)] = 0.0

    def hook(_module, _inputs, logits):
        return logits + bias.to(device=logits.device, dtype=logits.dtype)

    return head.register_forward_hook(hook)


def probe_actions(model, fmt: InstructorFormat, states: Sequence[State]) -> dict[str, float]:
    """Mean P(action) over ``states`` from the next-token distribution over the menu digits (temperature 1):
    logged before and after training, so a run shows what it changed."""
    import torch

    if not states:
        return {}
    batch = fmt.tokenizer(
        [fmt.prompt_text(s) for s in states], return_tensors="pt", padding=True, add_special_tokens=False
    ).to(model.device)
    with torch.inference_mode():
        logits = model(**batch).logits[:, -1, fmt.answer_token_ids].float()
    mean = torch.softmax(logits, dim=-1).mean(dim=0).cpu().tolist()
    return {name: round(p, 4) for name, p in zip(fmt.names, mean, strict=True)}


def write_policy_meta(folder: Path, kind: str, actions: Sequence[str], **extra) -> None:
    meta = {"kind": kind, "actions": list(actions), **extra}
    (folder / POLICY_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_policy_meta(folder: str | Path, field: str = "policy") -> dict:
    path = Path(folder) / POLICY_FILE
    if not path.is_file():
        raise TeamsRLError(
            f"'{folder}' is not a trained policy folder (no {POLICY_FILE}); train one with "
            "`teams-rl train-policy` or use 'random'",
            field=field,
        )
    return json.loads(path.read_text(encoding="utf-8"))


class InstructorPolicy:
    """A trained instructor (a full model folder, or a LoRA adapter over ``base_model``) choosing actions.

    Reads the next-token distribution over the menu digits in one forward pass per batch; ``sample=False``
    takes the most likely action, ``sample=True`` draws from it with a per-state seed.
    """

    def __init__(
        self,
        folder: str | Path,
        actions: Sequence[Action],
        *,
        sample: bool = False,
        temperature: float = 1.0,
        run_seed: int = 0,
        batch_size: int = 16,
        device: str | None = None,
    ):
        meta = read_policy_meta(folder)
        missing = [n for n in meta["actions"] if n not in {a.name for a in actions}]
        if missing:
            raise TeamsRLError(
                f"the policy was trained with actions {meta['actions']}; missing now: {missing}", field="actions"
            )
        by_name = {a.name: a for a in actions}
        self.folder, self.meta = Path(folder), meta
        self.name = f"{meta.get('algorithm', 'instructor')}:{self.folder.name}"
        self.sample, self.temperature, self.run_seed, self.batch_size = sample, temperature, run_seed, batch_size
        self.model, tokenizer = _load_model(self.folder, meta, device)
        self.format = InstructorFormat([by_name[n] for n in meta["actions"]], tokenizer)

    def probabilities(self, states: Sequence[State]):
        """``(len(states), n_actions)`` tensor of action probabilities."""
        import torch

        tok, out = self.format.tokenizer, []
        ids = torch.tensor(self.format.answer_token_ids)
        for start in range(0, len(states), self.batch_size):
            texts = [self.format.prompt_text(s) for s in states[start : start + self.batch_size]]
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float().cpu()
            out.append(torch.softmax(logits[:, ids] / max(self.temperature, 1e-6), dim=-1))
        return torch.cat(out) if out else torch.empty(0, len(ids))

    def select(self, states: Sequence[State]) -> list[str]:
        import torch

        probs = self.probabilities(states)
        names = self.format.names
        if not self.sample:
            return [names[int(i)] for i in probs.argmax(dim=-1)]
        picks = []
        for s, p in zip(states, probs, strict=True):
            gen = torch.Generator().manual_seed(derive_seed(self.run_seed, s.seed_id, s.step, "policy"))
            picks.append(names[int(torch.multinomial(p, 1, generator=gen))])
        return picks


def _load_model(folder: Path, meta: dict, device: str | None):
    from teams_rl.llm.loader import default_device, load_causal_lm, load_tokenizer

    device = device or default_device()
    tokenizer = load_tokenizer(str(folder), padding_side="left", pad_from_eos=False, field="policy")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_causal_lm(meta["base_model"], dtype="float32", field="policy")
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = load_causal_lm(str(folder), dtype="float32", field="policy")
    return model.to(device).eval(), tokenizer
