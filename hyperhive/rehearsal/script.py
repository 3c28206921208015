"""What the agents' scripted claude answers in the rehearsal (pure functions, no I/O).

Each reply is computed from the request alone (who asks, and the newest message of its
conversation), so a retried request gets the same answer:

- manager, woken by the operator's kickoff → ``request_spawn(greeter)``;
- manager, woken by ``approval_resolved`` (approved) → ``send(greeter, GREETER_TASK)``;
- greeter, woken by the task → ``send(operator, hello)``, then ``ask(operator, options)``;
- greeter, woken by ``question_answered`` → ``send(operator, reply with the answer)``;
- after any tool result not followed by another step → a short text ends the turn.
"""

from __future__ import annotations

import json
from typing import Any, Final

from hyperhive.rehearsal.mock_api import RecordedRequest, Reply, text, tool_use

NEW_AGENT: Final = "greeter"
KICKOFF: Final = (
    "Rehearsal: please hire a new agent called greeter to say hello to me and ask me one question."
)
GREETER_TASK: Final = "Welcome to the hive! Please greet the operator and ask them what to do."
HELLO: Final = "Hello, operator! I am greeter, freshly spawned in my own container."
QUESTION: Final = "What should I work on first?"
OPTIONS: Final = ("write the docs", "fix the tests", "take a break")
REPLY_PREFIX: Final = "Thank you! I will start with:"

_TOOL = "mcp__hyperhive__"


def agent_of(req: RecordedRequest) -> str | None:
    """Whose claude sent ``req`` (the system prompt names the agent)."""
    for name in ("manager", NEW_AGENT):
        if f"You are **{name}**" in req.system_text:
            return name
    return None


def _last_tool_use(req: RecordedRequest) -> dict[str, Any] | None:
    """The tool call whose result is the newest message, if the newest message is one."""
    # Claude Code also sends ``role: system`` entries (e.g. a token budget) after the turn.
    messages = [m for m in req.messages if m.get("role") in ("user", "assistant")]
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list) or not any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    ):
        return None
    for msg in reversed(messages[:-1]):
        if msg.get("role") == "assistant" and isinstance(msg.get("content"), list):
            for block in reversed(msg["content"]):
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    return block
            return None
    return None


def _system_fields(prompt: str, event: str) -> dict[str, Any] | None:
    """The JSON fields of a system message ``<event> {...}`` quoted in a wake prompt."""
    for line in prompt.splitlines():
        if line.startswith(event + " "):
            try:
                fields = json.loads(line[len(event) + 1 :])
            except ValueError:
                return None
            return fields if isinstance(fields, dict) else None
    return None


def manager_reply(req: RecordedRequest) -> Reply:
    if _last_tool_use(req) is not None:
        return text("Done for now.")
    prompt = req.last_user_text
    resolved = _system_fields(prompt, "approval_resolved")
    if resolved is not None:
        if resolved.get("agent") == NEW_AGENT and resolved.get("status") == "approved":
            return tool_use(_TOOL + "send", {"to": NEW_AGENT, "body": GREETER_TASK})
        return text(f"The spawn of {NEW_AGENT} was not approved; nothing more to do.")
    if KICKOFF in prompt:
        return tool_use(
            _TOOL + "request_spawn",
            {"name": NEW_AGENT, "description": "Greets the operator (rehearsal)."},
        )
    return text("Nothing to do.")


def greeter_reply(req: RecordedRequest) -> Reply:
    last = _last_tool_use(req)
    if last is not None:
        name, args = last.get("name"), last.get("input") or {}
        if name == _TOOL + "send" and args.get("body") == HELLO:
            return tool_use(
                _TOOL + "ask",
                {"question": QUESTION, "options": list(OPTIONS)},
            )
        return text("Done for now.")
    prompt = req.last_user_text
    answered = _system_fields(prompt, "question_answered")
    if answered is not None:
        body = f"{REPLY_PREFIX} {answered.get('answer')}."
        return tool_use(_TOOL + "send", {"to": "operator", "body": body})
    if GREETER_TASK in prompt:
        return tool_use(_TOOL + "send", {"to": "operator", "body": HELLO})
    return text("Nothing to do.")


def story_reply(req: RecordedRequest) -> Reply:
    """The mock's responder: every main request of the rehearsal."""
    agent = agent_of(req)
    if agent == "manager":
        return manager_reply(req)
    if agent == NEW_AGENT:
        return greeter_reply(req)
    return text("Nothing to do.")
