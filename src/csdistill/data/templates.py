"""Prompt templates: a record {instruction, input, ...} -> the prompt text the model continues.

A template has two format strings, one for records with a non-empty ``input`` and one without.
Named templates: ``alpaca`` (the paper's Alpaca-style prompt, as in MiniLLM/DistiLLM's Dolly data),
``plain`` (short, for tiny tasks) and ``prompt`` (the record's ``prompt`` field verbatim). Any other template string is a format string over the
record's fields, e.g. ``"Q: {instruction}\\nA: "``.

Chat records (``messages``) arrive with their prompt already rendered in ``record["prompt"]``
(see ``data.formats``): that text is used verbatim, whatever the template.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from csdistill.errors import UserError


@dataclass(frozen=True)
class PromptTemplate:
    with_input: str  # format string used when record["input"] is non-empty
    without_input: str  # format string used otherwise


ALPACA = PromptTemplate(
    with_input=("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    without_input=("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:\n"),
)
PLAIN = PromptTemplate(with_input="{instruction}\n{input}\n", without_input="{instruction}\n")
# the record's own rendered prompt, verbatim (e.g. `csdistill data respond` output under the teacher's chat template)
PROMPT_FIELD = PromptTemplate(with_input="{prompt}", without_input="{prompt}")
TEMPLATES = {"alpaca": ALPACA, "plain": PLAIN, "prompt": PROMPT_FIELD}


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """A named template, or a custom format string (used with and without input alike)."""
    if isinstance(template, PromptTemplate):
        return template
    if template in TEMPLATES:
        return TEMPLATES[template]
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if not fields:
        raise UserError(f"data.template={template!r} is neither a named template ({', '.join(TEMPLATES)}) "
                         "nor a format string with fields; write e.g. 'Q: {instruction}\\nA: '")
    return PromptTemplate(with_input=template, without_input=template)


def build_prompt(record: dict, template: str | PromptTemplate = "alpaca") -> str:
    """The prompt text of `record` under `template` (a name or a format string over record fields)."""
    if isinstance(record.get("prompt"), str) and "messages" in record:
        return record["prompt"]  # chat record: rendered when loaded
    chosen = get_template(template)
    fields = {key: "" if value is None else str(value) for key, value in record.items()}
    fields.setdefault("input", "")
    text = chosen.with_input if fields["input"].strip() else chosen.without_input
    try:
        return text.format_map(fields)
    except KeyError as err:
        raise UserError(f"data.template={text!r} uses the field {err.args[0]!r}, which the record lacks "
                         f"(fields: {', '.join(sorted(record))}); add it to the data or change the template") from None
