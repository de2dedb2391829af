"""Tokenizers: load any Hugging Face ``tokenizer.json``, special tokens, the OLMo-2 chat template.

A tokenizer may be given as a ``tokenizer.json`` file, a tokenizer artifact directory, a checkpoint
(which carries its tokenizer), or a Hugging Face folder. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (EOS, PAD, *ROLE_TOKENS)
_PAD_CANDIDATES = (PAD, "<|padding|>")

# OLMo-2-Instruct's template: EOS first; each turn is "<|role|>\n" + content + "\n"; an assistant turn
# ends with EOS (and "\n" unless it is the last message); the generation prompt is "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{{ eos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def format_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False, eos: str = EOS) -> str:
    """The chat template in Python; gives the same string as the Jinja template above (tested)."""
    parts = [eos]
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        last = i == len(messages) - 1
        if role in ("system", "user"):
            parts.append(f"<|{role}|>\n{content}\n")
        elif role == "assistant":
            parts.append(f"<|assistant|>\n{content}{eos}" + ("" if last else "\n"))
        else:
            raise ValueError(f"unknown chat role '{role}' (expected system, user or assistant)")
        if last and add_generation_prompt:
            parts.append("<|assistant|>\n")
    return "".join(parts)


def find_tokenizer_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "tokenizer.json", path / "tokenizer" / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no tokenizer.json (expected a file, a tokenizer artifact, or a checkpoint)")


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` that knows our special tokens and chat format."""

    def __init__(self, tokenizer: HFTokenizer, path: Path | None = None, chat_template: str | None = None):
        self.hf = tokenizer
        self.path = path
        self.chat_template = chat_template or CHAT_TEMPLATE
        self.eos_id = self._id_of(EOS)
        if self.eos_id is None:
            raise ValueError(f"tokenizer {path} has no {EOS} token")
        self.pad_id = next((i for t in _PAD_CANDIDATES if (i := self._id_of(t)) is not None), self.eos_id)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        file = find_tokenizer_file(path)
        template_file = file.parent / CHAT_TEMPLATE_FILE
        template = template_file.read_text() if template_file.is_file() else None
        return cls(HFTokenizer.from_file(str(file)), path=file, chat_template=template)

    def _id_of(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of token ids in use (the model's embedding may be padded beyond this)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def format_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        return format_chat(messages, add_generation_prompt, eos=EOS)

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> list[int]:
        return self.encode(self.format_chat(messages, add_generation_prompt))
