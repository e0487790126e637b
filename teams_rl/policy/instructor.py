"""The instructor LLM as a policy: its state prompt, its one-number answer, and ``InstructorPolicy``, which loads a
trained instructor and picks actions in synthesis. The action head with the logit mask that keeps it on the menu is
in ``action_head``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.actions import PROMPTS_DIR, Action, PromptSpec, load_prompt
from teams_rl.env.environment import State, derive_seed
from teams_rl.policy.action_head import ACTION_HEAD, HEAD_FILE, add_action_head

POLICY_FILE = "policy.json"
_ANSWER_RE = re.compile(r"\s*(\d)\s*")


def load_instructor_prompt(path: str | None = None) -> PromptSpec:
    """The state prompt (``prompts/instructor.yaml`` unless ``path`` names another YAML file)."""
    return load_prompt(
        path or "instructor",
        folder=PROMPTS_DIR,
        placeholders=("instruction", "input", "depth", "history", "menu"),
        required=("instruction",),
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
        return self.prompt.render(
            instruction=state.instruction,
            input=extra,
            depth=str(state.depth),
            history=history(state),
            menu=self.menu,
        )

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


def history(state: State) -> str:
    """The rewrites already applied, as the instructor reads them: "none (the seed)" or "deepen, then concretize"."""
    return ", then ".join(a.replace("_", " ") for a in state.actions) if state.actions else "none (the seed)"


def head_meta(fmt: InstructorFormat, temperature: float) -> dict:
    """What ``InstructorPolicy`` needs to rebuild the head and sample as in training."""
    return {ACTION_HEAD: True, "answer_token_ids": list(fmt.answer_token_ids), "temperature": float(temperature)}


def spread_states(states: Sequence[State], n: int) -> list[State]:
    """``n`` states spread evenly over ``states`` (so a probe covers every category, not the first one)."""
    if n <= 0 or not states:
        return []
    step = max(1, len(states) // n)
    return list(states[::step][:n])


def state_probs(model, fmt: InstructorFormat, states: Sequence[State], batch_size: int = 16, temperature: float = 1.0):
    """``(len(states), n_actions)`` P(action | state) from the answer-token logits of the last position (one
    forward pass per batch, only the last position's logits computed)."""
    import torch

    out = []
    for start in range(0, len(states), batch_size):
        texts = [fmt.prompt_text(s) for s in states[start : start + batch_size]]
        batch = fmt.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            logits = model(**batch, logits_to_keep=1).logits[:, -1, fmt.answer_token_ids].float()
        out.append(torch.softmax(logits / max(temperature, 1e-6), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, len(fmt.names))


def probe_actions(model, fmt: InstructorFormat, states: Sequence[State]) -> dict[str, float]:
    """Mean P(action) over ``states`` (temperature 1), and ``spread``: the mean KL of each state's distribution to
    that mean (0 when the policy ignores the instruction). Logged before and after training."""
    return probe_summary(fmt.names, state_probs(model, fmt, states)) if states else {}


def probe_summary(names: Sequence[str], probs) -> dict[str, float]:
    """Mean P(action) over the rows of ``probs`` (states x actions), and ``spread``: the mean KL(p_s || mean)."""
    mean = probs.mean(dim=0)
    spread = (probs * (probs.clamp_min(1e-12).log() - mean.clamp_min(1e-12).log())).sum(dim=-1).mean()
    out = {name: round(float(p), 4) for name, p in zip(names, mean, strict=True)}
    return {**out, "spread": round(float(spread), 4)}


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
        temperature: float | None = None,
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
        if temperature is None:  # sample as it was trained
            temperature = float(meta.get("temperature", 1.0))
        self.sample, self.temperature, self.run_seed, self.batch_size = sample, temperature, run_seed, batch_size
        self.model, tokenizer = _load_model(self.folder, meta, device)
        self.format = InstructorFormat([by_name[n] for n in meta["actions"]], tokenizer)

    def probabilities(self, states: Sequence[State]):
        """``(len(states), n_actions)`` tensor of action probabilities at the policy's temperature."""
        return state_probs(self.model, self.format, states, self.batch_size, self.temperature)

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


def write_untrained_policy(folder: str | Path, base_model: str, actions: Sequence[Action]) -> Path:
    """A policy folder for the instructor as training starts (zero action head: uniform), for benches."""
    from teams_rl.llm.loader import load_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(base_model, padding_side="left", pad_from_eos=False, field="policy")
    fmt = InstructorFormat(actions, tokenizer)
    tokenizer.save_pretrained(folder)
    write_policy_meta(
        folder,
        "instructor",
        fmt.names,
        algorithm="untrained",
        base_model=base_model,
        untrained=True,
        **head_meta(fmt, 1.0),
    )
    return folder


def _load_model(folder: Path, meta: dict, device: str | None):
    from teams_rl.llm.loader import default_device, load_causal_lm, load_tokenizer

    device = device or default_device()
    tokenizer = load_tokenizer(str(folder), padding_side="left", pad_from_eos=False, field="policy")
    has_head = bool(meta.get(ACTION_HEAD))
    if meta.get("untrained"):  # the instructor before training: the base model and a zero action head
        model = load_causal_lm(meta["base_model"], dtype="float32", field="policy")
        add_action_head(model, meta["answer_token_ids"])
    elif (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_causal_lm(meta["base_model"], dtype="float32", field="policy")
        if has_head:  # peft restores the trained head into it (modules_to_save)
            add_action_head(base, meta["answer_token_ids"])
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = load_causal_lm(str(folder), dtype="float32", field="policy")
        if has_head:
            add_action_head(model, meta["answer_token_ids"])
    if has_head and not meta.get("untrained"):
        from safetensors.torch import load_file

        getattr(model, ACTION_HEAD).load_state_dict(load_file(str(folder / HEAD_FILE)))
    return model.to(device).eval(), tokenizer
