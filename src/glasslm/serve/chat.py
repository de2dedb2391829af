"""``glasslm chat``: an interactive terminal chat with history, the chat template and streamed replies."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import TextIO

from glasslm.model.generate import Engine, SamplingParams
from glasslm.serve.tracing import DEFAULT_MIN_LEN, ENABLE_HINT, Tracer, format_trace
from glasslm.tokenizer import ROLE_TOKENS

HELP = (
    "commands: /reset (forget the conversation), /trace [MIN_LEN] (the last reply's spans found verbatim "
    "in the training data), /exit (or Ctrl-D) to leave"
)


@dataclass
class ChatSession:
    """The conversation so far; each reply is generated from the whole history in the chat template."""

    engine: Engine
    params: SamplingParams
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    tracer: Tracer | None = None
    trace_min_len: int = DEFAULT_MIN_LEN

    def __post_init__(self) -> None:
        hf = getattr(self.engine.tokenizer, "hf", None)
        role_ids = [hf.token_to_id(t) for t in ROLE_TOKENS] if hf is not None else []
        stop_ids = [*self.params.stop_token_ids, *(i for i in role_ids if i is not None)]
        self.params = replace(self.params, stop_token_ids=stop_ids)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self) -> list[int]:
        return self.engine.tokenizer.encode_chat(self.messages, add_generation_prompt=True)

    def reply(self, user_text: str, out: TextIO) -> str:
        """Add the user's turn, stream the assistant's reply to ``out``, add it to the history."""
        self.messages.append({"role": "user", "content": user_text})
        ids = self.prompt_ids()
        room = self.engine.max_len - 1 - len(ids)
        if room < 1:
            self.messages.pop()
            raise ValueError(
                f"the conversation has {len(ids)} tokens, the model holds {self.engine.max_len}: /reset"
            )
        params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))
        parts = []
        for event in self.engine.stream(ids, params):
            if event.text:
                parts.append(event.text)
                out.write(event.text)
                out.flush()
        text = "".join(parts)
        self.messages.append({"role": "assistant", "content": text})
        return text

    def trace_last(self, min_len: int | None = None) -> str:
        """``/trace``: the last assistant reply's spans found verbatim in the training data, as text."""
        if self.tracer is None:
            return f"(tracing is off: {ENABLE_HINT})"
        replies = [m["content"] for m in self.messages if m["role"] == "assistant"]
        if not replies:
            return "(nothing to trace yet: /trace looks at the last reply)"
        n = min_len or self.trace_min_len
        return format_trace(self.tracer.trace(replies[-1], min_len=n), n, self.tracer.steps_note)


def run_chat(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    interactive = stdin.isatty()
    stdout.write(f"glasslm chat — {HELP}\n")
    while True:
        if interactive:
            stdout.write("\nyou> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return 0
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            stdout.write("(conversation reset)\n")
            continue
        if command == "/trace" or command.startswith("/trace "):
            stdout.write(_trace_command(session, command) + "\n")
            stdout.flush()
            continue
        if command.startswith("/"):
            stdout.write(f"unknown command {command}; {HELP}\n")
            continue
        stdout.write("assistant> ")
        stdout.flush()
        try:
            session.reply(text, stdout)
        except ValueError as e:
            stdout.write(f"\n(error: {e})")
        stdout.write("\n")
        stdout.flush()


def _trace_command(session: ChatSession, command: str) -> str:
    arg = command[len("/trace") :].strip()
    if arg and not (arg.isdigit() and int(arg) >= 1):
        return f"(usage: /trace [MIN_LEN], MIN_LEN a number of tokens >= 1; got {arg!r})"
    return session.trace_last(int(arg) if arg else None)
