"""Data: record formats, prompt templates, tokenisation with labels, collation, plain-text blocks.

    load_records(path)               -> RecordSet(records=[{instruction, input, response, ...}], skipped)
    build_prompt(record, "alpaca")   -> prompt text
    encode_example(record, tok, ...) -> {input_ids, labels (IGNORE_INDEX on the prompt), prompt_length}
    collate(examples, pad_id)        -> right-padded (B, T) tensors for training
    encode_prompts(prompts, tok, P)  -> left-padded (B, P) tensors for generation
"""

from csdistill.data.collate import batches, collate, encode_example, encode_prompts, encode_response, left_pad
from csdistill.data.formats import DataError, DataFileNotFound, RecordSet, load_records
from csdistill.data.templates import ALPACA, PLAIN, TEMPLATES, PromptTemplate, build_prompt
from csdistill.data.text import load_text_chunks
from csdistill.data.tokenizer import build_char_tokenizer

__all__ = [
    "ALPACA", "PLAIN", "TEMPLATES", "DataError", "DataFileNotFound", "PromptTemplate", "RecordSet", "batches",
    "build_char_tokenizer", "build_prompt", "collate", "encode_example", "encode_prompts", "encode_response",
    "left_pad", "load_records", "load_text_chunks",
]
