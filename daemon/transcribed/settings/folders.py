"""What a `[[folders]]` entry of the config file may say: the value types of per-folder rules
(jobs/rules.py applies them to each recording)."""

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from transcribed.settings.declared import Doc
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

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: Annotated[str, Doc(example="team-china")] = Field(
        description="Inbox subfolder the rule applies to (and everything below)."
    )
    language: Annotated[str | None, Doc(default="the language setting", example="zh")] = Field(
        default=None, description="Force this language."
    )
    context: Annotated[
        str | None,
        Doc(
            example="预算, 季度",
            more="A `.context.txt` in an inbox folder adds its text to "
            "the context of every recording in that folder and below (the nearest one applies).",
        ),
    ] = Field(default=None, max_length=MAX_CONTEXT_BYTES, description="Glossary / hotwords.")
    formats: Annotated[
        list[Format] | None, Doc(default="the formats setting", example=("json", "srt"))
    ] = Field(
        default=None, min_length=1, description="Transcript files to write for recordings here."
    )
    disposal: Annotated[Disposal | None, Doc(default="the disposal setting", example="delete")] = (
        Field(default=None, description="What happens to originals from here once transcribed.")
    )
    output: Annotated[
        str | None, Doc(default="the same subfolder as in the inbox", example="chinese")
    ] = Field(default=None, description="Outbox subfolder for its transcripts.")
    diarize: Annotated[bool | None, Doc(default="on wherever a diarizer is set", example=False)] = (
        Field(
            default=None,
            description="Speaker labels on or off here (on wherever a diarizer is set).",
        )
    )
    max_speakers: Annotated[int | None, Doc(default="the max_speakers setting", example=2)] = Field(
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
