"""What the server refuses: one dataclass, whose defaults ``glasslm serve``'s flags read too.

Kept apart from ``app.py`` so that the command line reads the defaults without importing FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeLimits:
    max_prompt_tokens: int = 2048  # longer prompts: 413
    max_new_tokens: int = 1024  # a larger max_tokens: 400
    max_queue: int = 64  # requests waiting beyond the running batch; more: 429
    max_choices: int = 16  # prompts × n in one request
    # A larger body: 413 before it is read on. 1 MiB holds ~250k tokens of text, far past max_prompt_tokens.
    max_body_bytes: int = 1 << 20
    max_batch: int = 8  # requests decoded together (the engine's cache slots)
