#!/usr/bin/env python3
"""A tiny stand-in for the ``claude`` CLI: prints ``--output-format stream-json`` as the real
one does (``system/init``, ``assistant``, ``result``), following a script, so the turn loop's
rules are tested in milliseconds (the real CLI stays for the end-to-end tests).

``FAKE_CLAUDE_DIR`` is its directory:

- ``script.json`` — a list of steps, one per run, in order (runs past the end: ``ok``). A step
  is an object: ``result`` ``"ok"`` (default), ``"error"`` (``is_error``, exit 1) or
  ``"api_error"`` (an API error message with ``status``/``error_type``, then a failed
  result, exit 1); ``text``; ``delay`` seconds before the result; ``stderr`` lines;
  ``no_session``: with ``--continue``, fail like older CLIs ("No conversation found");
  ``input_tokens`` (default 100) of the assistant's usage; ``"too_long"`` as ``result``: the
  context-length failure as claude reports it (``terminal_reason: prompt_too_long``). A run
  whose prompt is ``/compact`` prints claude's compaction (``status`` compacting,
  ``compact_boundary`` with ``post_tokens``, default 50; with ``compact_error``, claude's
  failed compaction instead) unless its step fails. ``context_window``: reported in the
  result's ``modelUsage``.
- ``calls.jsonl`` — written by it: one line per run, ``{"argv": [...], "step": {...}}``.

Standard library only: it runs under any ``python3``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    root = Path(os.environ["FAKE_CLAUDE_DIR"])
    argv = sys.argv[1:]
    script_file = root / "script.json"
    steps = json.loads(script_file.read_text()) if script_file.exists() else []
    calls = root / "calls.jsonl"
    done = len(calls.read_text().splitlines()) if calls.exists() else 0
    step: dict[str, Any] = steps[done] if done < len(steps) else {}
    with calls.open("a") as f:
        f.write(json.dumps({"argv": argv, "step": step}) + "\n")

    model = argv[argv.index("--model") + 1] if "--model" in argv else "haiku"
    if step.get("no_session") and "--continue" in argv:
        print("No conversation found to continue", file=sys.stderr, flush=True)
        return 1
    sid = str(uuid.uuid4())
    emit({"type": "system", "subtype": "init", "session_id": sid, "model": model, "tools": []})
    for line in step.get("stderr", []):
        print(line, file=sys.stderr, flush=True)
    time.sleep(float(step.get("delay", 0)))
    kind = step.get("result", "ok")
    prompt = argv[argv.index("--") + 1] if "--" in argv else ""
    if prompt == "/compact" and kind == "ok":
        return compaction(sid, int(step.get("post_tokens", 50)), step.get("compact_error"))
    if kind == "too_long":
        emit(
            {
                "type": "assistant",
                "message": {
                    "model": "<synthetic>",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Prompt is too long"}],
                },
                "session_id": sid,
                "error": "invalid_request",
            }
        )
        emit(
            {
                "type": "result",
                "subtype": "success",
                "is_error": True,
                "result": "Prompt is too long",
                "terminal_reason": "prompt_too_long",
                "api_error_status": 400,
                "api_error_type": "invalid_request_error",
                "session_id": sid,
            }
        )
        return 1
    text = step.get("text", "done" if kind == "ok" else "it went wrong")
    usage = {
        "input_tokens": int(step.get("input_tokens", 100)),
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "output_tokens": 7,
    }
    result: dict[str, Any] = {
        "type": "result",
        "subtype": "success",
        "is_error": kind != "ok",
        "result": text,
        "session_id": sid,
        "usage": usage,
        "total_cost_usd": 0.0012,
    }
    if "context_window" in step:
        result["modelUsage"] = {model: {"contextWindow": int(step["context_window"])}}
    if kind == "api_error":
        status, error_type = int(step["status"]), str(step["error_type"])
        emit(
            {
                "type": "assistant",
                "message": {
                    "model": "<synthetic>",
                    "role": "assistant",
                    "content": [{"type": "text", "text": f"API Error: {status} {text}"}],
                },
                "session_id": sid,
                "is_api_error_message": True,
                "api_error_status": status,
                "api_error_type": error_type,
            }
        )
        result.update(api_error_status=status, api_error_type=error_type)
    else:
        message = {"model": model, "role": "assistant", "usage": usage}
        message["content"] = [{"type": "text", "text": text}]
        emit({"type": "assistant", "message": message, "session_id": sid})
    emit(result)
    return 0 if kind == "ok" else 1


def compaction(sid: str, post_tokens: int, error: str | None) -> int:
    emit({"type": "system", "subtype": "status", "status": "compacting", "session_id": sid})
    if error:
        failed = {"compact_result": "failed", "compact_error": error}
        emit({"type": "system", "subtype": "status", "status": None, **failed})
    else:
        emit({"type": "system", "subtype": "status", "status": None, "compact_result": "success"})
        meta = {"trigger": "manual", "pre_tokens": 5000, "post_tokens": post_tokens}
        emit({"type": "system", "subtype": "compact_boundary", "compact_metadata": meta})
    emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "num_turns": 0,
            "result": "",
            "session_id": sid,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
