"""A character-level tokenizer built locally (no download) for tiny models and tests.

One token per character of the alphabet (printable ASCII plus newline and tab by default) and four
specials: ``<pad>`` (id 0), ``<bos>`` (1), ``<eos>`` (2), ``<unk>`` (3). Characters outside the
alphabet map to ``<unk>``.

It adds **no** special tokens on encode (no BOS, no EOS): csdistill appends EOS to responses itself
(``data.collate.encode_example``), and a BOS the model never saw in pre-training would only add a
position. It round-trips through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from typing import Sequence
from csdistill.errors import UserError

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
DEFAULT_ALPHABET = "".join(chr(code) for code in range(32, 127)) + "\n\t"  # printable ASCII, space, \n, \t


def _vocabulary(alphabet: str, extra_tokens: Sequence[str]) -> dict[str, int]:
    """Token -> id: specials first, then each distinct character, then extra tokens."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *alphabet, *extra_tokens):
        vocab.setdefault(token, len(vocab))
    return vocab


def build_char_tokenizer(alphabet: str | None = None, extra_tokens: Sequence[str] = ()):
    """A ``PreTrainedTokenizerFast`` with one token per character of `alphabet` (default: printable
    ASCII, space, newline, tab) plus `extra_tokens` (whole-string tokens, e.g. ``"<sep>"``).

    pad/bos/eos/unk are set; encoding adds no special tokens; decoding concatenates characters.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = DEFAULT_ALPHABET if alphabet is None else alphabet
    if not alphabet:
        raise UserError("build_char_tokenizer: alphabet='' is empty; pass the characters to model (or None for ASCII)")
    backend = Tokenizer(models.WordLevel(_vocabulary(alphabet, extra_tokens), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char alone
    backend.decoder = decoders.Fuse()  # join tokens without spaces
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    if extra_tokens:
        backend.add_tokens(list(extra_tokens))  # matched as whole strings before the char split
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=1_000_000,
    )
