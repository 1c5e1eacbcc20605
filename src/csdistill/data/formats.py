"""Record formats: instruction JSONL, chat JSONL and plain text -> normalised records.

Every loaded record is a dict with at least ``instruction``, ``input`` and ``response`` (strings;
the text format gives ``text`` instead). Accepted spellings:

- instruction: ``instruction``; ``input`` or Dolly's ``context``; ``response`` or Alpaca's ``output``.
  Extra fields (``task``, ``answer``, ``references``, ``category`` ...) are kept as they are.
- chat: ``messages``: [{role, content}, ...]; the last assistant turn is the response, the turns
  before it form the prompt, rendered into ``record["prompt"]`` (the tokenizer's chat template when
  a tokenizer with one is passed, else a role-tagged template, ``CHAT_TURN``).
- sharegpt: ``conversations``: [{from, value}, ...] (ShareGPT/Vicuna layout; ``from`` is human/user,
  gpt/assistant or system; a top-level ``system`` string is a leading system turn): converted to
  ``messages`` and read as chat, so multi-turn records render through the tokenizer's chat template too.
  The converted turns are kept in ``record["messages"]``.
- text: a ``.txt`` file (one record, the whole file) or JSONL with a ``text`` field.

Local files are read line by line so that every bad record is reported as
``DataError: <file>:<line>: <field>: <what is wrong>; <fix>``; that includes bytes that are not UTF-8,
chat roles outside ``CHAT_ROLES``, a ``references`` that is neither a string (one reference) nor a list
of strings, and instruction/chat records over ``MAX_RECORD_CHARS`` characters (their tokenisation
would need ~400 bytes of memory per character; text documents have no limit, they are tokenised in
pieces). ``skip_bad`` skips such records and
counts them. Files are JSONL; a ``.json`` file holding one array (Alpaca's and ShareGPT's layout) is read
too, record by record (``json_array_items``), its "lines" then being 1-based record numbers; an array cut
off mid-record is a DataError at the record where it ends (``csdistill data fetch sharegpt`` keeps the
complete records of such a file). A name that is not a local file but looks like a hub
dataset id is read with ``datasets.load_dataset`` (train split).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from csdistill.errors import UserError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "instruction", "chat", "sharegpt", "text")
CHAT_TURN = "<|{role}|>\n{content}\n"  # role-tagged turn when the tokenizer has no chat template
CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MAX_RECORD_CHARS = 1_000_000  # characters in the string fields of one instruction/chat record


class DataError(UserError):
    """A malformed record or data file: names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {problem}")
        self.path, self.line, self.field = path, line, field


class DataFileNotFound(DataError, FileNotFoundError):
    """The data path is neither a local file nor a reachable hub dataset (a ValueError and a FileNotFoundError)."""


@dataclass
class RecordSet:
    records: list[dict]
    skipped: int = 0  # malformed records skipped (skip_bad=True)
    format: str = "instruction"
    path: str = ""


# --------------------------------------------------------------------------- reading raw rows


UTF8_FIX = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)"


def read_utf8(path: Path) -> str:
    """The file's text; DataError naming file:line when it is binary, UTF-16 or not UTF-8."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(str(path), None, "encoding", "the file is UTF-16; " + UTF8_FIX.replace("latin1", "utf-16"))
    if b"\x00" in data[:4096]:
        raise DataError(str(path), None, "encoding", "the file looks binary (NUL bytes); pass a UTF-8 text/JSONL file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(str(path), line, "encoding", f"byte {data[err.start]:#04x} at column {column} is not "
                        f"UTF-8; {UTF8_FIX}") from None


class TruncatedArray(DataError):
    """A JSON array that ends mid-record (a cut-off download): `complete` records were read before it."""

    def __init__(self, path: str, line: int, complete: int):
        super().__init__(path, line, "json", f"the file ends mid-record after {complete} complete records (the "
                         "array is cut off); restore the whole file or keep the complete records")
        self.complete = complete


def json_array_items(text: str, path: str = "<json>") -> Iterator[tuple[int, object]]:
    """(line where the item starts, item) for each item of the JSON array `text`, decoded one at a time
    (json.JSONDecoder.raw_decode), so a file cut off mid-record yields every complete record before raising
    TruncatedArray; DataError (file:line) for invalid JSON elsewhere."""
    decoder, index, end, line = json.JSONDecoder(), _skip_space(text, 0), len(text), 1
    if text[index:index + 1] != "[":
        raise DataError(path, 1, "json", "expected a JSON array ('[' first); pass a JSONL or .json array file")
    index, count, last = _skip_space(text, index + 1), 0, 0
    while index < end and text[index] != "]":
        line += text.count("\n", last, index)
        last = index
        try:
            item, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as err:
            if text.rstrip().endswith("]"):
                raise DataError(path, err.lineno, "json", f"invalid JSON ({err.msg} at column {err.colno}); "
                                "fix the file") from None
            raise TruncatedArray(path, line, count) from None
        count += 1
        yield line, item
        index = _skip_space(text, index)
        if text[index:index + 1] == ",":
            index = _skip_space(text, index + 1)
        elif index < end and text[index] != "]":
            raise DataError(path, line + text.count("\n", last, index), "json", "expected ',' or ']' between "
                            "array items; fix the file")
    if index >= end:
        raise TruncatedArray(path, line + text.count("\n", last, end), count)


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _json_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed object or DataError) for each non-blank line; a .json array: (record number, obj)."""
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        number = 0
        try:
            for number, (_, row) in enumerate(json_array_items(text, str(path)), start=1):
                yield number, row
        except DataError as err:
            yield number + 1, err
        return
    # split on \n only: str.splitlines() also splits inside strings holding U+2028, U+0085, \x0c ...
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, DataError(str(path), number, "json", f"invalid JSON ({err.msg} at column {err.colno}); "
                                    "each line must hold one JSON object")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") <= 1 and not name.startswith((".", "/", "~")) and not Path(name).suffix


def _hub_rows(name: str) -> Iterator[tuple[int, object]]:
    """Rows of a hub dataset's train split (row numbers start at 1); a clear error when offline."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as err:  # the hub raises many types (ConnectionError, DatasetNotFoundError, ...)
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set, so nothing is downloaded: download it first or pass a "
                "local JSONL file" if offline else "check the name, or pass a local JSONL file")
        raise DataFileNotFound(name, None, "path", f"not a local file and the hub dataset could not be loaded "
                               f"({type(err).__name__}: {err}); {hint}") from None
    yield from enumerate(dataset, start=1)


def _rows(path: str | Path) -> tuple[str, Iterator[tuple[int, object]]]:
    name = str(path)
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix == ".txt":
            return name, iter([(1, {"text": read_utf8(p)})])
        return name, _json_rows(p)
    if p.exists():
        raise DataError(name, None, "path", "is a directory; pass a JSONL file")
    if _looks_like_hub_id(name) and name:
        return name, _hub_rows(name)
    raise DataFileNotFound(name, None, "path", "file not found; write the data there or fix the path")


# --------------------------------------------------------------------------- one record per format


def _string(row: dict, key: str, where: tuple[str, int], required: bool) -> str:
    """row[key] as a string ('' when absent/None and not required); DataError on a wrong type."""
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(*where, key, f"missing field {key!r} (fields present: {', '.join(sorted(row)) or 'none'})")
        return ""
    if not isinstance(value, str):
        raise DataError(*where, key, f"expected a string, got {type(value).__name__} {value!r:.60}")
    return value


def _first_present(row: dict, keys: tuple[str, ...]) -> str:
    return next((k for k in keys if row.get(k) is not None), keys[0])


def instruction_record(row: dict, where: tuple[str, int], require_response: bool = True) -> dict:
    """{instruction, input, response, ...extra fields} from an instruction/Alpaca/Dolly row."""
    instruction = _string(row, "instruction", where, required=True)
    input_text = _string(row, _first_present(row, ("input", "context")), where, required=False)
    response_key = _first_present(row, ("response", "output"))
    response = _string(row, response_key, where, required=require_response)
    if require_response and not response.strip():
        raise DataError(*where, response_key, "empty response; remove the record or pass skip_bad")
    record = {**row, "instruction": instruction, "input": input_text, "response": response}
    if "references" in row:
        record["references"] = _references(row["references"], where)
    return record


def _references(value: object, where: tuple[str, int]) -> list[str]:
    """A string is one reference; a list must hold strings; null is none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataError(*where, "references", f"expected a string or a list of strings, got {value!r:.60}")


def _check_size(row: dict, where: tuple[str, int]) -> None:
    def chars(value: object) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, dict):
            return sum(chars(v) for v in value.values())
        if isinstance(value, list):
            return sum(chars(v) for v in value)
        return 0

    size = chars(row)
    if size > MAX_RECORD_CHARS:
        raise DataError(*where, "record", f"{size:,} characters, over the limit of {MAX_RECORD_CHARS:,} per record "
                        "(csdistill.data.formats.MAX_RECORD_CHARS); shorten or split it, or pass skip_bad")


def _messages(row: dict, where: tuple[str, int]) -> list[dict]:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(*where, "messages", f"expected a non-empty list of {{role, content}}, got {messages!r:.60}")
    for index, turn in enumerate(messages):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise DataError(*where, f"messages[{index}]", f"expected {{'role': str, 'content': str}}, got {turn!r:.60}")
        if turn["role"] not in CHAT_ROLES:
            raise DataError(*where, f"messages[{index}].role", f"unknown role {turn['role']!r}; valid roles: "
                            f"{', '.join(CHAT_ROLES)}")
    return messages


def render_chat(messages: list[dict], tokenizer=None) -> str:
    """The prompt text of `messages` ending where the assistant's answer begins."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = "".join(CHAT_TURN.format(role=m["role"], content=m["content"]) for m in messages)
    return turns + "<|assistant|>\n"


def chat_record(row: dict, where: tuple[str, int], require_response: bool = True, tokenizer=None) -> dict:
    """{prompt, instruction, input, response, messages}: the last assistant turn is the response."""
    messages = _messages(row, where)
    has_answer = messages[-1]["role"] == "assistant"
    if require_response and not has_answer:
        raise DataError(*where, "messages", f"the last turn has role {messages[-1]['role']!r}; it must be the "
                        "assistant's response")
    context, response = (messages[:-1], messages[-1]["content"]) if has_answer else (messages, "")
    if require_response and not response.strip():
        raise DataError(*where, f"messages[{len(messages) - 1}].content", "empty response; remove the record or pass skip_bad")
    if not context:
        raise DataError(*where, "messages", "no turn before the assistant's response; add the user turn")
    users = [m["content"] for m in context if m["role"] == "user"]
    return {**row, "prompt": render_chat(context, tokenizer), "instruction": users[-1] if users else context[-1]["content"],
            "input": "", "response": response}


def sharegpt_messages(row: dict, where: tuple[str, int]) -> list[dict]:
    """[{role, content}] of a ShareGPT row {"conversations": [{"from", "value"}], "system"?}; DataError on an
    unknown role, a turn that is not {from: str, value: str}, an empty turn or an empty conversation."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(*where, "conversations", f"expected a non-empty list of {{from, value}}, got {turns!r:.60}; "
                        "remove the record or pass skip_bad")
    system = _string(row, "system", where, required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise DataError(*where, field, f"expected {{'from': str, 'value': str}}, got {turn!r:.60}")
        if turn["from"] not in SHAREGPT_ROLES:
            raise DataError(*where, f"{field}.from", f"unknown role {turn['from']!r}; valid roles: "
                            f"{', '.join(SHAREGPT_ROLES)}")
        if not turn["value"].strip():
            raise DataError(*where, f"{field}.value", "empty turn (an empty exchange); remove the record or pass "
                            "skip_bad")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return messages


def sharegpt_record(row: dict, where: tuple[str, int], require_response: bool = True, tokenizer=None) -> dict:
    """A ShareGPT row read as the chat record of its turns (see chat_record)."""
    chat_row = {key: value for key, value in row.items() if key not in ("conversations", "system")}
    return chat_record({**chat_row, "messages": sharegpt_messages(row, where)}, where, require_response, tokenizer)


def text_record(row: dict, where: tuple[str, int]) -> dict:
    text = _string(row, "text", where, required=True)
    if not text.strip():
        raise DataError(*where, "text", "empty text; remove the record or pass skip_bad")
    return {**row, "text": text}


def detect_format(row: dict) -> str:
    """instruction, chat or text, from the keys of the first record."""
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "text" in row and "instruction" not in row:
        return "text"
    return "instruction"


# --------------------------------------------------------------------------- loading


def _parse(row: object, fmt: str, where: tuple[str, int], require_response: bool, tokenizer) -> dict:
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(*where, "record", f"expected a JSON object, got {type(row).__name__} {row!r:.60}")
    if fmt == "text":
        return text_record(row, where)
    _check_size(row, where)
    if fmt == "chat":
        return chat_record(row, where, require_response, tokenizer)
    if fmt == "sharegpt":
        return sharegpt_record(row, where, require_response, tokenizer)
    return instruction_record(row, where, require_response)


def load_records(path: str | Path, format: str = "auto", skip_bad: bool = False, require_response: bool = True,
                 tokenizer=None) -> RecordSet:
    """Read and validate every record of `path` (JSONL, .json array, .txt or a hub dataset id).

    format: auto (chat if the first record has ``messages``, sharegpt if it has ``conversations``, text for
    .txt or ``text`` records, else instruction), instruction, chat, sharegpt or text. skip_bad: skip malformed records (counted and
    logged) instead of raising DataError. require_response=False accepts records without a
    response (prompts to answer; response ''). tokenizer: its chat template renders chat prompts.
    Raises DataError (a ValueError) naming file, line and field; DataFileNotFound (also a
    FileNotFoundError) for a missing file; DataError when no record is left.
    """
    if format not in FORMATS:
        raise UserError(f"data.format={format!r} is not valid; choose one of: {', '.join(FORMATS)}")
    name, rows = _rows(path)
    records: list[dict] = []
    skipped, fmt = 0, None if format == "auto" else format
    for number, row in rows:
        if fmt is None and (isinstance(row, dict) or name.endswith(".txt")):  # a bad first line decides nothing
            fmt = "text" if name.endswith(".txt") else detect_format(row)
        try:
            records.append(_parse(row, fmt or "instruction", (name, number), require_response, tokenizer))
        except DataError as err:
            if not skip_bad:
                raise
            skipped += 1
            logger.warning("skipping bad record %s", err)
    if skipped:
        logger.warning("%s: skipped %d malformed records (data.skip_bad_records)", name, skipped)
    if not records:
        reason = f"all {skipped} records are malformed" if skipped else "the file holds no records"
        raise DataError(name, None, "records", f"empty dataset: {reason}; add records or fix the path")
    return RecordSet(records=records, skipped=skipped, format=fmt or "instruction", path=name)
