"""Tokenizers: load any Hugging Face ``tokenizer.json``, special tokens, the OLMo-2 chat template.

Training (``glasslm tokenizer train``, in ``glasslm/tokenizer_train.py``): byte-level BPE with Hugging Face ``tokenizers``' own trainer,
GPT-2-style pre-tokenization, the five special tokens at ids 0..4, on the train split only.

A tokenizer may be given as a ``tokenizer.json`` file, a tokenizer artifact directory, a checkpoint
(which carries its tokenizer), or a Hugging Face folder. Nothing is ever fetched from a hub.

Chat encoding (``Tokenizer.encode_chat``, which serving, ``glasslm chat`` and SFT/DPO/RL all use):
special tokens come only from the template. Message contents are encoded as plain text, so a user who
types ``<|assistant|>`` or ``<|endoftext|>`` gets those characters, never the role or end-of-text
token (role injection). For every conversation whose contents hold no special-token string the ids
equal what the exported Jinja template gives through Hugging Face (tested); for contents that do,
ours intentionally differ (HF's ``apply_chat_template`` parses the markers inside the text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tokenizers import Encoding, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from glasslm.config import ConfigError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (EOS, PAD, *ROLE_TOKENS)
MAX_VOCAB = 2**22  # ids; 4x the largest released vocabularies (Gemma 262k, Llama 3 128k)
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


def chat_pieces(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False, eos: str = EOS
) -> list[tuple[str, bool]]:
    """The chat template as ``(text, is_marker)`` pieces in order. Markers (EOS and the role markers) are
    the template's own and may be special tokens; everything else, message contents included, is text."""
    pieces: list[tuple[str, bool]] = [(eos, True)]
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        last = i == len(messages) - 1
        if role in ("system", "user"):
            pieces += [(f"<|{role}|>", True), (f"\n{content}\n", False)]
        elif role == "assistant":
            pieces += [("<|assistant|>", True), (f"\n{content}", False), (eos, True)]
            if not last:
                pieces.append(("\n", False))
        else:
            raise ValueError(f"unknown chat role '{role}' (expected system, user or assistant)")
        if last and add_generation_prompt:
            pieces += [("<|assistant|>", True), ("\n", False)]
    return pieces


def format_chat(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False, eos: str = EOS
) -> str:
    """The chat template in Python; gives the same string as the Jinja template above (tested)."""
    return "".join(text for text, _ in chat_pieces(messages, add_generation_prompt, eos))


def find_tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json a path names: the file itself, or the one in a tokenizer artifact or checkpoint.
    Inside an artifact it must be a regular file (a planted ``tokenizer.json -> /etc/passwd`` is refused,
    as every verb refuses an artifact holding a link)."""
    from glasslm import artifacts

    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "tokenizer.json", path / "tokenizer" / "tokenizer.json"):
        if candidate.is_file() or candidate.is_symlink():
            if (candidate.parent / artifacts.MANIFEST).is_file():
                artifacts.check_regular(candidate.parent)
            return candidate
    raise FileNotFoundError(
        f"{path}: no tokenizer.json (expected a file, a tokenizer artifact, or a checkpoint)"
    )


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` that knows our special tokens and chat format."""

    def __init__(self, tokenizer: HFTokenizer, path: Path | None = None, chat_template: str | None = None):
        self.hf = tokenizer
        self.path = path
        self.chat_template = chat_template or CHAT_TEMPLATE
        eos = self._id_of(EOS)
        if eos is None:
            raise ValueError(f"tokenizer {path} has no {EOS} token")
        self.eos_id: int = eos
        self.pad_id = next((i for t in _PAD_CANDIDATES if (i := self._id_of(t)) is not None), self.eos_id)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        file = find_tokenizer_file(path)
        template_file = file.parent / CHAT_TEMPLATE_FILE
        template = template_file.read_text() if template_file.is_file() else None
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises a bare Exception for a bad file
            raise ConfigError(f"{file}: not a tokenizer.json the tokenizers library can read ({e})") from None
        return cls(hf, path=file, chat_template=template)

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

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> list[int]:
        ids: list[int] = []
        for _, _, part in self._chat_parts(messages, add_generation_prompt):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids += part.ids
        return ids

    def encode_chat_with_offsets(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode_chat``'s ids and each id's character span in ``format_chat``'s string (SFT's labels)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for start, end, part in self._chat_parts(messages, add_generation_prompt):
            if isinstance(part, int):
                ids.append(part)
                offsets.append((start, end))
            else:
                ids += part.ids
                offsets += [(start + a, start + b) for a, b in part.offsets]
        return ids, offsets

    def _chat_parts(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
    ) -> list[tuple[int, int, int | Encoding]]:
        """The templated conversation as ``(start, end, marker id or encoded text run)`` in order, with
        character positions in ``format_chat``'s string.

        The template's markers that are added tokens of this vocabulary become their ids; the text
        between them (contents and the template's newlines, joined) is encoded with special-token
        parsing off, so a marker typed inside a message stays text. Cutting only where the whole string
        would be cut anyway keeps the ids equal to encoding that string whenever contents hold no marker.
        """
        added = self._added_tokens
        parts: list[tuple[int, int, int | str]] = []
        pos = 0
        for text, is_marker in chat_pieces(messages, add_generation_prompt, eos=EOS):
            start, pos = pos, pos + len(text)
            if is_marker and text in added:
                parts.append((start, pos, added[text]))
            elif parts and isinstance(last := parts[-1][2], str):
                parts[-1] = (parts[-1][0], pos, last + text)
            else:
                parts.append((start, pos, text))
        # encode_batch releases the GIL (encode does not), so a server encoding off its event loop stays responsive.
        runs = [p for _, _, p in parts if isinstance(p, str)]
        encodings = iter(self._plain.encode_batch(runs, add_special_tokens=False))
        return [(start, end, next(encodings) if isinstance(p, str) else p) for start, end, p in parts]

    @cached_property
    def _added_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.hf.get_added_tokens_decoder().items()}

    @cached_property
    def _plain(self) -> HFTokenizer:
        """A copy of the tokenizer that reads special-token strings in its input as ordinary text."""
        plain = HFTokenizer.from_str(self.hf.to_str())
        plain.encode_special_tokens = True
        return plain


# ---- what BPE training takes (the training itself: glasslm/tokenizer_train.py) ----------------------
@dataclass
class BPEConfig:
    vocab_size: int = 32_000  # ids in the tokenizer, special tokens included (the model pads to 128)
    min_frequency: int = 2  # a pair must occur this often to be merged
    max_train_bytes: int | None = None  # cap on the training text (None: all of the train split)
    max_eval_bytes: int = 20_000_000  # per source, for the bytes-per-token report

    def validate(self) -> None:
        floor = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size <= floor:
            raise ConfigError(
                f"tokenizer.vocab_size must exceed {floor} (256 bytes + special tokens), got {self.vocab_size}"
            )
        if self.vocab_size > MAX_VOCAB:  # tokenizers would try to allocate it all (1e12: a Rust abort)
            raise ConfigError(f"tokenizer.vocab_size must be at most {MAX_VOCAB:,}, got {self.vocab_size:,}")
        if self.min_frequency < 1:
            raise ConfigError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")


@dataclass
class TokenizerTrainConfig:
    tokenizer: BPEConfig = field(default_factory=BPEConfig)


def new_bpe() -> HFTokenizer:
    """An untrained byte-level BPE with GPT-2's pre-tokenization (regex split, bytes as symbols)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok
