"""Prompt templates (packaged in judges/prompts/*.txt, overridable from a directory) and the
delimiting that keeps web and policy text from posing as part of the prompt.

Every text shown to a model sits in a block `<<<BEGIN NAME #nonce>>> ... <<<END NAME #nonce>>>`
with a nonce hashed from the prompt's texts, and any `<<<` / `>>>` inside the text is broken up, so a
candidate can neither close its own block nor open a fake one. Templates use `$name` fields
(string.Template), so braces and JSON in templates or texts need no escaping.
"""

from __future__ import annotations

import re
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Dict, Iterable, Optional

from megatron_sip.errors import ConfigError

DECISION_FIELD = "decision"
"""Field of reasoned judge templates: where the decision line the judge must copy goes."""
_PACKAGE = "megatron_sip.judges"
_OPEN_RUN = re.compile(r"<{3,}")
_CLOSE_RUN = re.compile(r">{3,}")


def neutralize(text: str) -> str:
    """Break up marker-like runs of angle brackets so they cannot pass for block markers."""
    text = _OPEN_RUN.sub(lambda m: " ".join("<" * len(m.group(0))), text)
    return _CLOSE_RUN.sub(lambda m: " ".join(">" * len(m.group(0))), text)


def nonce_for(*texts: str) -> str:
    """The block nonce of a prompt showing `texts`: a hash of the texts themselves, so the same
    prompt renders the same way every time (reproducible judges), while no text can carry the
    nonce of a prompt that contains it (that would take a hash fixed point)."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:8]


def block(name: str, text: str, nonce: str) -> str:
    return f"<<<BEGIN {name} #{nonce}>>>\n{neutralize(text)}\n<<<END {name} #{nonce}>>>"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    template: Template
    source: str
    """Where it was read from (a packaged resource or a file path)."""

    def render(self, **fields: str) -> str:
        return self.template.substitute(fields)


def load_template(name: str, *, required: Iterable[str], prompt_dir: Optional[str], key: str,
                  needs_decision_line: bool) -> PromptTemplate:
    """`<name>.txt` from `prompt_dir` when it has one, else the packaged template; checked for
    the `$fields` the code fills, including (for reasoned judges) `$decision`: the line, with the
    call's nonce, that the parser reads the verdict from."""
    source, text = _read(name, prompt_dir, key)
    template = Template(text)
    found = _field_names(template, key, source)
    required = set(required) | ({DECISION_FIELD} if needs_decision_line else set())
    missing = sorted(required - found)
    if missing:
        why = (f" (ask for a last line that starts with ${DECISION_FIELD}: the verdict is read only "
               "from that line)") if DECISION_FIELD in missing else ""
        raise ConfigError(key, f"{source}: template lacks ${', $'.join(missing)}{why}")
    unknown = sorted(found - set(required))
    if unknown:
        raise ConfigError(key, f"{source}: unknown field ${', $'.join(unknown)} "
                          f"(available: ${', $'.join(sorted(required))})")
    return PromptTemplate(name=name, template=template, source=source)


def _read(name: str, prompt_dir: Optional[str], key: str):
    file_name = f"{name}.txt"
    if prompt_dir is not None:
        directory = Path(prompt_dir).expanduser()
        if not directory.is_dir():
            raise ConfigError(key, f"{directory} is not a directory")
        path = directory / file_name
        if path.is_file():
            return str(path), path.read_text()
    resource = resources.files(_PACKAGE).joinpath("prompts", file_name)
    return f"<packaged>/{file_name}", resource.read_text()


def _field_names(template: Template, key: str, source: str) -> set:
    names: Dict[str, None] = {}
    for match in template.pattern.finditer(template.template):
        name = match.group("named") or match.group("braced")
        if name:
            names[name] = None
        elif match.group("invalid") is not None:
            raise ConfigError(key, f"{source}: invalid '$' at offset {match.start()} (write $$ for a dollar)")
    return set(names)
