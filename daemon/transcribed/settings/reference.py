"""The configuration reference (docs/configuration.md, between its markers) and the example
config (config/transcribed.toml), made from the settings' declarations (`declared.Doc`).

    python -m transcribed.settings.reference --write   # after changing a setting
    python -m transcribed.settings.reference --check   # exit 1 when either file is stale

The tests run the check, as CI does: the documentation cannot drift from the code.
"""

import argparse
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from transcribed.settings import ENV_PREFIX, Settings
from transcribed.settings.declared import Doc, Group, doc_of
from transcribed.settings.folders import FolderRule
from transcribed.settings.web import WebSettings

REPOSITORY = Path(__file__).resolve().parents[3]
REFERENCE = Path("docs/configuration.md")
EXAMPLE = Path("config/transcribed.toml")
BEGIN = (
    "<!-- BEGIN GENERATED SETTINGS REFERENCE: `python -m transcribed.settings.reference "
    "--write` makes this part from the settings' declarations (daemon/transcribed/settings/); "
    "edit those, not this part. -->"
)
END = "<!-- END GENERATED SETTINGS REFERENCE -->"
_WIDTH = 96
_TABLES: dict[str, type[BaseModel]] = {"folders": FolderRule, "web": WebSettings}


@dataclass(frozen=True)
class Entry:
    """One setting as documented: `key` inside its `table` ("" for the top level)."""

    key: str
    table: str
    field: FieldInfo
    doc: Doc

    @property
    def title(self) -> str:
        table = "[[folders]]" if self.table == "folders" else f"[{self.table}]"
        return f"`{self.key}`" if not self.table else f"`{table}` {self.key}"


def entries() -> Iterator[tuple[Group, list[Entry]]]:
    """Every setting, by section in the sections' order; a table's keys follow it."""
    top = [Entry(n, "", f, doc_of(f)) for n, f in Settings.model_fields.items()]
    if undeclared := [entry.key for entry in top if entry.doc.group is None]:
        raise ValueError(f"settings without a Doc(Group…) declaration: {undeclared}")
    for group in Group:
        section = [entry for entry in top if entry.doc.group is group]
        for entry in [e for e in section if e.key in _TABLES]:
            model = _TABLES[entry.key]
            section += [Entry(n, entry.key, f, doc_of(f)) for n, f in model.model_fields.items()]
        yield group, section


# --- the reference -----------------------------------------------------------------------


def reference() -> str:
    """The generated part of docs/configuration.md, markers included."""
    lines = [BEGIN, ""]
    lines += _wrap(
        "Each setting says its type, its default, what a reload does with it, and its "
        "environment variable. **Reload** is `systemctl reload transcribed` (SIGHUP): "
        '"applies it" means jobs started afterwards use the new value; any other change is '
        "logged as `config.needs_restart` and waits for the next start. A list in the "
        "environment is a comma list or JSON (`TRANSCRIBED_FORMATS=txt,srt`); a table, JSON."
    )
    for group, section in entries():
        lines += ["", f"## {group.value}"]
        for entry in section:
            lines += ["", f"### {entry.title}", ""]
            lines += _wrap(_escape(_prose(entry)))
            lines += [
                "",
                "| type | default | reload | environment |",
                "|---|---|---|---|",
                f"| {_type(entry)} | {_default(entry)} | {_reload(entry)} | {_env(entry)} |",
            ]
    return "\n".join([*lines, "", END])


def _prose(entry: Entry) -> str:
    return " ".join(part for part in (entry.field.description or "", entry.doc.more) if part)


def _escape(text: str) -> str:
    """`<name>.error.json` is text, not an HTML tag."""
    return text.replace("<", "\\<")


def _default(entry: Entry) -> str:
    if entry.doc.default is not None:
        return _escape(entry.doc.default)
    if entry.field.is_required():
        return "required"
    if entry.field.default is None:
        return "none"
    return f"`{_toml(entry.field.default)}`"


def _reload(entry: Entry) -> str:
    if entry.table == "web" or entry.key == "web":
        return "the page reads it at its start"
    parent = Settings.model_fields[entry.table] if entry.table else entry.field
    return "applies it" if doc_of(parent).reload else "needs a restart"


def _env(entry: Entry) -> str:
    if entry.table:
        return f"in `{ENV_PREFIX}{entry.table.upper()}`"
    variable = f"`{ENV_PREFIX}{entry.key.upper()}`"
    if entry.key == "folders":
        return f"{variable} (JSON list)"
    if entry.key == "web":
        return f"{variable} (JSON object)"
    return variable


def _type(entry: Entry) -> str:
    if entry.doc.kind is not None:
        return entry.doc.kind
    return ", ".join([_type_words(entry.field.annotation), *_limits(entry.field.metadata)])


def _type_words(annotation: object) -> str:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _or([_type_words(a) for a in arguments if a is not type(None)])
    if origin is typing.Annotated:
        return _type_words(arguments[0])
    if origin is typing.Literal:
        return _or([f"`{value}`" for value in arguments])
    if origin in (list, tuple):
        item = _type_words(arguments[0])
        return "list of tables" if item == "table" else f"list of {item}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    names = {str: "text", int: "integer", float: "number", bool: "true or false", Path: "path"}
    if annotation in names:
        return names[annotation]
    raise ValueError(f"no words for the type {annotation!r}: add them to reference._type_words")


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _limits(metadata: list[object]) -> list[str]:
    marks = {type(mark): mark for mark in metadata}
    low, high = marks.get(annotated_types.Ge), marks.get(annotated_types.Le)
    gt, shortest = marks.get(annotated_types.Gt), marks.get(annotated_types.MinLen)
    longest = marks.get(annotated_types.MaxLen)
    limits = []
    if isinstance(low, annotated_types.Ge) and isinstance(high, annotated_types.Le):
        limits.append(f"{low.ge} to {high.le}")
    elif isinstance(low, annotated_types.Ge):
        limits.append(f"at least {low.ge}")
    elif isinstance(high, annotated_types.Le):
        limits.append(f"at most {high.le}")
    if isinstance(gt, annotated_types.Gt):
        limits.append(f"over {gt.gt}")
    if isinstance(shortest, annotated_types.MinLen):
        limits.append(f"at least {shortest.min_length} item")
    if isinstance(longest, annotated_types.MaxLen):
        limits.append(f"at most {longest.max_length} characters")
    return limits


# --- the example config ----------------------------------------------------------------

_EXAMPLE_HEAD = """\
# transcribed configuration: every setting, with its default. Copy it to
# /etc/transcribed/config.toml (or pass --config PATH) and set the folders.
#
# Made by `python -m transcribed.settings.reference --write` from the settings' declarations
# (daemon/transcribed/settings/): edit those, not this file. docs/configuration.md says more
# about each setting.
#
# Every key can also be set as an environment variable TRANSCRIBED_<KEY>, which wins (lists
# as comma lists or JSON: TRANSCRIBED_FORMATS=txt,srt). Relative paths here are read against
# this file's folder; `~` is the running user's home. "A reload applies it": `systemctl
# reload transcribed` (SIGHUP) applies the new value to jobs started afterwards; a change to
# any other setting waits for the next start."""


def example() -> str:
    """config/transcribed.toml."""
    lines = [_EXAMPLE_HEAD]
    for group, section in entries():
        lines += ["", "", f"# ---- {group.value} " + "-" * (_WIDTH - len(group.value) - 8)]
        for entry in section:
            lines += ["", *_example_entry(entry)]
    return "\n".join(lines) + "\n"


def _example_entry(entry: Entry) -> list[str]:
    if entry.key in _TABLES and not entry.table:  # the table's header; its keys follow
        header = "# [[folders]]" if entry.key == "folders" else "# [web]"
        return [*_comment(entry.field.description or ""), header]
    facts = "Required." if entry.field.is_required() else f"Default: {_plain_default(entry)}."
    description = entry.field.description or ""
    said = entry.doc.default is not None and entry.doc.default in description
    if said or "default" in description.lower():
        facts = ""  # the description says it already ("off by default")
    if not entry.table and entry.doc.reload:
        facts = f"{facts} A reload applies it.".lstrip()
    value = entry.doc.example if entry.doc.example is not None else entry.field.default
    if value is None:
        raise ValueError(f"{entry.key}: no example value and no default to show")
    line = f"{entry.key} = {_toml(value)}"
    text = " ".join(part for part in (entry.field.description, facts) if part)
    return [*_comment(text), line if _set(entry) else f"# {line}"]


def _set(entry: Entry) -> bool:
    return entry.doc.set_in_example or (entry.field.is_required() and not entry.table)


def _plain_default(entry: Entry) -> str:
    return entry.doc.default if entry.doc.default is not None else _toml(entry.field.default)


def _comment(text: str) -> list[str]:
    return _wrap(text, "# ")


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if value is None:
        return "none"
    raise ValueError(f"no TOML for {value!r}")


# --- writing and checking ------------------------------------------------------------------


def wanted(root: Path) -> dict[Path, str]:
    """Each generated file's whole text: the reference's prose around its markers is kept."""
    return {root / REFERENCE: _with_reference(root / REFERENCE), root / EXAMPLE: example()}


def _with_reference(path: Path) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = f"# Configuration reference\n\n{BEGIN}\n{END}\n"
    before, begin, rest = text.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{path} has lost its markers: put back {BEGIN} and {END}")
    return before + reference() + after


def stale(root: Path = REPOSITORY) -> list[Path]:
    """The generated files that differ from what the declarations make."""
    return [path for path, text in wanted(root).items() if _read(path) != text]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transcribed.settings.reference")
    parser.add_argument("--write", action="store_true", help="write the files anew")
    parser.add_argument("--check", action="store_true", help="exit 1 when either is stale")
    parser.add_argument("--root", type=Path, default=REPOSITORY, help="the repository")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in wanted(args.root).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return 0
    if args.check:
        if old := stale(args.root):
            names = ", ".join(str(path) for path in old)
            print(f"stale: {names}; run python -m transcribed.settings.reference --write")
            return 1
        return 0
    print(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
