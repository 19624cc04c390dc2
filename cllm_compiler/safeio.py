"""Reading files a user gives: every one is hostile until checked.

One place for the checks every loader needs before it trusts a byte: regular files only (a FIFO
blocks for ever, /dev/zero never ends), no links that leave the model's folder (a symlinked
tokenizer.json would copy someone's secrets into the artifact), sizes bounded before anything is
allocated, JSON nesting bounded, YAML without aliases (a "billion laughs" recipe), and user
regexes run with a time limit (``(.+)+X`` backtracks for ever).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import CllmError, LoadError

KiB, MiB = 1 << 10, 1 << 20
SMALL = 4 * MiB         # config.json, tokenizer_config.json, manifests, recipes
TOKENIZER = 64 * MiB    # tokenizer.json (a 256k vocabulary with merges is ~ 20 MB)
MAX_DEPTH = 64          # JSON/YAML nesting; real configs nest 3-4 deep
REGEX_SECONDS = 0.5     # a tensor-name regex on names of <= 255 characters takes microseconds


def regular_file(path: Path, *, inside: Path | None = None, what: str | None = None,
                 error: type[CllmError] = LoadError) -> Path:
    """`path` if it is a regular file (through links only when they stay inside `inside`)."""
    path = Path(path)
    label = what or path.name
    if inside is not None:
        real, root = path.resolve(), Path(inside).resolve()
        if not real.is_relative_to(root):
            raise error(f"{label} is a link that leaves its folder ({path} -> {real})",
                        hint="cllm reads a model's files only from inside its folder; copy the file in")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{label} does not exist ({path})", hint="check the path") from None
    except OSError as e:
        raise error(f"cannot read {label}: {e.strerror}", hint="check the path and its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, device or socket)"
        raise error(f"{label} is {kind} ({path})", hint="give a regular file")
    return path


def read_bytes(path: Path, limit: int, *, inside: Path | None = None, what: str | None = None,
               error: type[CllmError] = LoadError) -> bytes:
    """The file's bytes, refused past `limit` before they are read."""
    label = what or Path(path).name
    regular_file(path, inside=inside, what=label, error=error)
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the check still cannot block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise error(f"cannot read {label}: {e.strerror}", hint="check the path and its permissions") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{label} is not a regular file", hint="give a regular file")
        if st.st_size > limit:
            raise error(f"{label} is {st.st_size} bytes; cllm reads at most {limit} for this file",
                        hint="this is not the file cllm expects here")
        data = f.read(st.st_size + 1)  # not limit + 1: read(n) allocates n bytes up front
    if len(data) > min(limit, st.st_size):
        raise error(f"{label} grew past {limit} bytes while being read", hint="give a file that is not being written")
    return data


def read_text(path: Path, limit: int, **kw: Any) -> str:
    error = kw.get("error", LoadError)
    try:
        return read_bytes(path, limit, **kw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{kw.get('what') or Path(path).name} is not UTF-8 text (byte {e.start})",
                    hint="this is not the file cllm expects here") from None


def parse_json(text: str | bytes, what: str, *, error: type[CllmError] = LoadError, kind: type | None = dict) -> Any:
    """JSON with bounded nesting and an error naming the file; `kind` is the type the top must be."""
    try:
        doc = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8 text (byte {e.start})", hint="this is not the file cllm expects here") from None
    except RecursionError:
        raise error(f"{what} nests deeper than JSON parsing allows", hint="this is not the file cllm expects here") from None
    except ValueError as e:
        raise error(f"{what} is not valid JSON: {str(e)[:120]}", hint="the file is corrupt or truncated") from None
    if depth(doc) > MAX_DEPTH:
        raise error(f"{what} nests more than {MAX_DEPTH} levels deep", hint="this is not the file cllm expects here")
    if kind is not None and not isinstance(doc, kind):
        raise error(f"{what} holds a JSON {json_type(doc)}, not an object",
                    hint="this is not the file cllm expects here")
    return doc


def json_type(v: Any) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null", bool: "boolean",
            int: "number", float: "number"}.get(type(v), type(v).__name__)


def read_json(path: Path, limit: int = SMALL, *, inside: Path | None = None, what: str | None = None,
              error: type[CllmError] = LoadError, kind: type | None = dict) -> Any:
    label = what or Path(path).name
    return parse_json(read_bytes(path, limit, inside=inside, what=label, error=error), label, error=error, kind=kind)


def depth(doc: Any) -> int:
    """Nesting depth of parsed JSON/YAML, without recursion (a 10^5-deep list must not crash)."""
    best, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return best


def load_yaml(text: str, what: str, error: type[CllmError]) -> Any:
    """YAML through safe_load, with anchors/aliases refused: no recipe needs them, and an alias
    bomb of a few hundred bytes expands to gigabytes."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise error(f"{what} uses a YAML alias (*{event.anchor}) at line {event.start_mark.line + 1}",
                            hint="write the value out; cllm refuses YAML anchors and aliases")
            return super().compose_node(parent, index)

    try:
        doc = yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise error(f"{what} nests deeper than YAML parsing allows", hint="simplify the file") from None
    except yaml.YAMLError as e:
        raise error(f"{what} is not valid YAML: {' '.join(str(e).split())[:200]}",
                    hint="fix the YAML near the line and column named above") from None
    if depth(doc) > MAX_DEPTH:
        raise error(f"{what} nests more than {MAX_DEPTH} levels deep", hint="simplify the file")
    return doc


def compile_regex(pattern: str, what: str, error: type[CllmError]) -> Any:
    """A user regex, compiled with the `regex` engine so that matching can be given a time limit."""
    import regex
    if len(pattern) > 1000:
        raise error(f"{what} is longer than 1000 characters", hint="match tensor names with a shorter regex")
    try:
        return regex.compile(pattern, flags=regex.VERSION0)
    except (regex.error, OverflowError, RecursionError) as e:
        raise error(f"{what} is not a valid regex: {e}", hint="e.g. skip=layers\\.0\\.") from None


def regex_search(compiled: Any, text: str, what: str, error: type[CllmError]) -> bool:
    try:
        return compiled.search(text, timeout=REGEX_SECONDS) is not None
    except TimeoutError:
        raise error(f"{what} took over {REGEX_SECONDS} s on '{text[:80]}' (catastrophic backtracking)",
                    hint="simplify the regex: avoid nested repeats such as (.+)+") from None


def short(value: Any, n: int = 60) -> str:
    """repr() of an untrusted value, cut short (a huge value must not be expanded into a message)."""
    try:
        text = repr(value) if not isinstance(value, (dict, list)) or len(value) < 8 else f"<{type(value).__name__} of {len(value)}>"
    except RecursionError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= n else text[:n] + "…"
