"""The one place where a dataset row becomes chat messages (used by synthesis answers and by SFT)."""

from __future__ import annotations

from teams_rl.llm.base import Message


def user_content(instruction: str, input: str = "") -> str:
    """The user's turn: the instruction, then its input (if any) after a blank line."""
    instruction, input = instruction.strip(), (input or "").strip()
    return f"{instruction}\n\n{input}" if input else instruction


def to_messages(instruction: str, input: str = "", response: str | None = None) -> tuple[Message, ...]:
    """``(user[, assistant])`` turns; the model's own chat template adds any system prompt."""
    messages: list[Message] = [{"role": "user", "content": user_content(instruction, input)}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return tuple(messages)


def to_prompt_completion(instruction: str, input: str = "", response: str = "") -> dict[str, list[Message]]:
    """A conversational prompt/completion pair for SFT: the user turn as the prompt, the answer as the completion
    (TRL then masks the prompt out of the loss, whatever the chat template looks like)."""
    user, assistant = to_messages(instruction, input, response)
    return {"prompt": [user], "completion": [assistant]}
