"""Text <-> token ids for documents, with the end-of-document (EOD) token made explicit.

Why `<|endoftext|>` and not the tokenizer's eos: the embedded tokenizer is SmolLM2-*Instruct*'s,
whose eos is `<|im_end|>` (id 2), the end of a chat turn. Pretraining documents are separated by
`<|endoftext|>` (id 0), the eos of the SmolLM2 base model that pretrained on them. So the EOD is
`<|endoftext|>` whenever the vocabulary has it, else the tokenizer's eos (`data.eod_token`
overrides both).

Special-token strings inside a document's text (a web page quoting `<|endoftext|>`) are encoded
as plain text (`split_special_tokens=True`): only the EOD that preprocess appends ends a document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from megatron_sip.errors import ConfigError

PRETRAINING_EOD = "<|endoftext|>"


@dataclass(frozen=True)
class TextCodec:
    """A Hugging Face tokenizer plus the EOD id documents end with."""

    tokenizer: Any
    eod_id: int
    eod_token: str
    vocab_size: int

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without special tokens and without EOD."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """`encode` of many texts at once (the fast tokenizer batches them natively)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in encoded["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` as the tokenizer renders it (special tokens kept visible)."""
        return self.tokenizer.decode([int(i) for i in ids])


def load_codec(spec: str, eod_token: Optional[str] = None, *, key: str = "data.tokenizer") -> TextCodec:
    """The codec of tokenizer `spec` (`embedded` or a local path); a ConfigError naming `key`
    (the config key or command-line flag the spec came from) when it cannot be loaded."""
    from megatron_sip.embedded import EmbeddedModelMissing, load_tokenizer

    try:
        tokenizer = load_tokenizer(spec)
    except EmbeddedModelMissing as exc:
        raise ConfigError(key, str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"cannot load tokenizer '{spec}': "
                          f"{str(exc).splitlines()[0]}") from exc
    return codec_from_tokenizer(tokenizer, eod_token)


def codec_from_tokenizer(tokenizer: Any, eod_token: Optional[str] = None) -> TextCodec:
    """Wrap an already loaded tokenizer; see the module docstring for the EOD choice."""
    vocab = tokenizer.get_vocab()
    if eod_token is None:
        eod_token = PRETRAINING_EOD if PRETRAINING_EOD in vocab else tokenizer.eos_token
        if eod_token is None:
            raise ConfigError("data.eod_token", f"the tokenizer has neither {PRETRAINING_EOD} nor "
                              "an eos token: name the end-of-document token")
    if eod_token not in vocab:
        raise ConfigError("data.eod_token", f"'{eod_token}' is not in the tokenizer's vocabulary")
    return TextCodec(tokenizer=tokenizer, eod_id=int(vocab[eod_token]), eod_token=eod_token,
                     vocab_size=len(tokenizer))
