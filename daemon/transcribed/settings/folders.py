"""What a `[[folders]]` entry of the config file may say: the value types of per-folder rules
(jobs/rules.py applies them to each recording)."""

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from transcribed.settings.languages import language_code

MAX_CONTEXT_BYTES = 4096  # the model's prompt is for a glossary, not a document

Format = Literal["txt", "json", "srt", "vtt", "tsv"]
Disposal = Literal["move", "delete", "shred"]


def _relative_folder(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{value!r} must be a folder below the inbox or outbox, like 'team/zh'")
    return str(path)


class FolderRule(BaseModel):
    """One `[[folders]]` entry of the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Inbox subfolder the rule applies to (and everything below).")
    language: str | None = Field(default=None, description="Force this language.")
    context: str | None = Field(
        default=None, max_length=MAX_CONTEXT_BYTES, description="Glossary / hotwords."
    )
    formats: list[Format] | None = Field(default=None, min_length=1)
    disposal: Disposal | None = None
    output: str | None = Field(default=None, description="Outbox subfolder for its transcripts.")
    diarize: bool | None = Field(
        default=None, description="Speaker labels on or off here (on wherever a diarizer is set)."
    )
    max_speakers: int | None = Field(
        default=None, ge=1, le=8, description="Label at most this many speakers here."
    )

    @field_validator("path", "output")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return None if value is None else _relative_folder(value)

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        return None if value is None else language_code(value)
