"""The page's own settings: the `[web]` table of the daemon's config file.

The page reads the daemon's folders and job database from the same file, so one config
describes both; the daemon itself ignores this table.
"""

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from transcribed.settings.declared import Doc
from transcribed.settings.paths import AbsolutePath

PASSWORD_SCHEME = "scrypt"  # noqa: S105  (the name of a hash function, not a secret)


class WebSettings(BaseModel):
    """`[web]` in the config file (or TRANSCRIBED_WEB as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: str = Field(
        default="127.0.0.1",
        description="Address the page listens on; anything but loopback needs a login.",
    )
    port: int = Field(
        default=8750, ge=0, le=65535, description="TCP port of the page (0: any free one)."
    )
    password_hash: Annotated[str | None, Doc(example="scrypt$…")] = Field(
        default=None,
        description="Hash of the page's password, made by `transcribed web-password`.",
    )
    token_file: Annotated[
        AbsolutePath | None,
        Doc(example="/etc/transcribed/web-token", more="chmod 600, 24 characters or more."),
    ] = Field(
        default=None,
        description="A file whose content (a long random token) also opens the page.",
    )
    session_hours: float = Field(
        default=12.0, gt=0, description="A login lasts this long (and ends when the page restarts)."
    )
    max_upload_mb: int = Field(default=2048, ge=1, description="Largest upload, in MiB.")
    uploads_per_hour: int = Field(
        default=60, ge=1, description="Uploads one client address may make per hour."
    )
    tls_certfile: Annotated[AbsolutePath | None, Doc(example="/etc/transcribed/web.crt")] = Field(
        default=None, description="Serve HTTPS with this certificate (PEM); with tls_keyfile."
    )
    tls_keyfile: Annotated[AbsolutePath | None, Doc(example="/etc/transcribed/web.key")] = Field(
        default=None, description="The certificate's private key."
    )
    trusted_proxies: Annotated[tuple[str, ...], Doc(example=("127.0.0.1",))] = Field(
        default=(),
        description="Reverse proxies (addresses or networks, e.g. 127.0.0.1) whose "
        "X-Forwarded-For and X-Forwarded-Proto headers name the real client; none by default.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request's whole header (and a form's body) must arrive within this.",
    )

    @field_validator("password_hash")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith(f"{PASSWORD_SCHEME}$") or value.count("$") != 5
        ):
            raise ValueError("is not a hash made by `transcribed web-password`")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "WebSettings":
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: set both or neither")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
