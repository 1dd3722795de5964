"""What a setting's declaration says besides its type, default and one-line description:
where it is documented, whether a reload applies it, and what the example config shows.

A setting is declared once, on its field:

    chunk_seconds: Annotated[float, Doc(Group.MODEL, reload=True)] = Field(
        default=30.0, ge=5, le=300, description="Longest piece handed to the model at once."
    )

The daemon's reload (`settings.reload`), the configuration reference (docs/configuration.md)
and the example config (config/transcribed.toml) are all derived from these declarations
(`settings.reference`); a test fails when either file is stale.
"""

import enum
from dataclasses import dataclass

from pydantic.fields import FieldInfo


class Group(enum.Enum):
    """The reference's and the example's sections, in their order. The tables come last:
    in TOML, every key after a table's header belongs to that table."""

    FOLDERS = "Folders"
    MODEL = "Model"
    TRANSCRIPTS = "Transcript files"
    INTAKE = "Picking files up"
    LIMITS = "Limits and retries"
    SERVERS = "vLLM servers"
    SERVICE = "Service: isolation, hooks, metrics"
    RULES = "Per-folder rules: [[folders]]"
    WEB = "The page: [web]"


@dataclass(frozen=True)
class Doc:
    group: Group | None = None  # None: a key of a table ([web], [[folders]]), under it
    # A SIGHUP (`systemctl reload transcribed`) applies it to jobs started afterwards;
    # a change to any other setting is logged as needing a restart.
    reload: bool = False
    more: str = ""  # what the reference says after the description
    default: str | None = None  # how the default reads where it is no plain value
    kind: str | None = None  # how the type reads where the field's own type would mislead
    example: object = None  # the example config's value instead of the default
    set_in_example: bool = False  # written as a setting in the example, not a comment


NO_DOC = Doc()


def doc_of(field: FieldInfo) -> Doc:
    """The field's Doc (the default one where it has none)."""
    return next((mark for mark in field.metadata if isinstance(mark, Doc)), NO_DOC)
