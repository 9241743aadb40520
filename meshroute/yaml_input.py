"""Reading the YAML files operators hand us (``apply -f``, node and reflector
configs) as hostile input: a size cap read before anything is parsed, UTF-8
checked with the place of the first bad byte, libyaml's C parser where it is
installed (it also bounds nesting), a cap on the number of documents, and
parse errors that never quote more than a short prefix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1 << 20  # a file of 1000 resources is about 150 KB
MAX_DOCUMENTS = 1000
MAX_ERROR_CHARS = 300

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlInputError(Exception):
    """The file cannot be read as YAML; the message names the file."""


def read_text(path: str, stdin: Any = None) -> str:
    """The text of ``path`` (``-``: ``stdin``, a binary stream), refused when
    larger than ``MAX_FILE_BYTES`` or not UTF-8."""
    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = (stdin or sys.stdin.buffer).read(MAX_FILE_BYTES + 1)
        else:
            with Path(path).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise YamlInputError(f"{source}: cannot read: {e.strerror}") from e
    if len(data) > MAX_FILE_BYTES:
        raise YamlInputError(f"{source}: larger than {MAX_FILE_BYTES >> 20} MiB; split it")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlInputError(f"{source}: line {line}: not valid UTF-8 (byte {e.start})") from e


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def documents(text: str, source: str) -> Iterator[Any]:
    """The documents of a YAML stream, one at a time, refusing more than
    ``MAX_DOCUMENTS``."""
    try:
        for i, doc in enumerate(yaml.load_all(text, Loader=_Loader), start=1):
            if i > MAX_DOCUMENTS:
                raise YamlInputError(f"{source}: more than {MAX_DOCUMENTS} documents; split it")
            yield doc
    except yaml.YAMLError as e:
        raise YamlInputError(f"{source}: not valid YAML: {_short(e)}") from e
    except RecursionError as e:
        raise YamlInputError(f"{source}: not valid YAML: nested too deeply") from e
    except (ValueError, OverflowError) as e:  # a scalar yaml cannot convert, e.g. a huge int
        raise YamlInputError(f"{source}: not valid YAML: {_short(e)}") from e


def one_document(text: str, source: str) -> Any:
    """The single document of a configuration file (None when empty)."""
    docs = list(documents(text, source))
    if len(docs) > 1:
        raise YamlInputError(f"{source}: expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None
