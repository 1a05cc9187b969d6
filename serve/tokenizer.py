"""Text <-> token ids, chat templates, and streaming detokenization, over a transformers tokenizer."""

from __future__ import annotations

import os
from collections.abc import Iterable

# Files whose presence means a Hugging Face directory carries a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class Tokenizer:
    """A transformers tokenizer with the few calls the engine makes.

    Parameters
    ----------
    hf_tokenizer : transformers.PreTrainedTokenizerBase
        The tokenizer to wrap.
    eos_token_ids : iterable of int
        End-of-sequence ids beyond the tokenizer's own (a model's config or generation config
        may list several, e.g. Llama 3's ``<|eot_id|>``).
    """

    def __init__(self, hf_tokenizer, eos_token_ids: Iterable[int] = ()) -> None:
        self.hf = hf_tokenizer
        self.eos_token_ids: set[int] = {int(t) for t in eos_token_ids}
        if hf_tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(hf_tokenizer.eos_token_id)
        self.bos_token_id: int | None = hf_tokenizer.bos_token_id
        self.chat_template: str | None = hf_tokenizer.chat_template

    @classmethod
    def from_dir(cls, path: str, eos_token_ids: Iterable[int] = ()) -> Tokenizer:
        """Load the tokenizer files of a Hugging Face model directory (never the hub)."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path, local_files_only=True), eos_token_ids)

    @classmethod
    def from_gguf(cls, path: str, eos_token_ids: Iterable[int] = ()) -> Tokenizer:
        """Build the tokenizer (and chat template) from a GGUF file's metadata."""
        from transformers import AutoTokenizer

        directory, name = os.path.split(os.path.abspath(path))
        return cls(AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True), eos_token_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with the special tokens the tokenizer adds by default (e.g. BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return self.hf(text).input_ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered by the model's chat template, ending with the
        assistant's generation prompt.

        Raises
        ------
        ValueError
            The model has no chat template, or ``messages`` is not a non-empty list of dicts.
        """
        if self.chat_template is None:
            raise ValueError("this model has no chat template; send a plain prompt instead")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The rendered template already holds every special token it wants.
        return self.hf(text, add_special_tokens=False).input_ids


class IncrementalDetokenizer:
    """Turns generated token ids into text increments as they arrive.

    Each :meth:`add` decodes a short window: the text of the tokens since the last emitted
    boundary, minus the text they had before the new token. Decoding a window rather than a single
    token keeps tokenizers that join pieces by context (leading spaces, byte fallback) right, and a
    window whose text ends in U+FFFD (an incomplete UTF-8 character) is held back until the
    character's remaining bytes arrive.

    Parameters
    ----------
    tokenizer : Tokenizer
    prompt_ids : list of int
        The prompt; its last few tokens give the first generated token its context.
    skip_special_tokens : bool
        Leave special tokens (EOS, chat markers) out of the text.
    """

    _CONTEXT = 5  # prompt tokens kept as left context

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-self._CONTEXT :])
        self.prefix_offset = 0  # start of the decoding window
        self.read_offset = len(self.ids)  # tokens before this have had their text emitted
        self.text = ""  # everything emitted so far

    def add(self, token_id: int) -> str:
        """Append one generated token; return the new text it completes (possibly ``""``)."""
        self.ids.append(int(token_id))
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], self.skip_special_tokens)
        after = decode(self.ids[self.prefix_offset :], self.skip_special_tokens)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        new = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new
        return new
