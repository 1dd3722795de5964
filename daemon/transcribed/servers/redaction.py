"""The one redaction every text a server sends back passes through before the daemon logs,
stores or shows it.

A proxy or a server may echo the request's `Authorization` header in an error page ("bad
header: Authorization: Bearer …"); from there it would reach the log, the job database, the
failed folder's reason files, `status` and the page. So the key itself, wherever it appears,
and any bearer token (whoever's) are replaced before the text goes anywhere.
"""

import re

REDACTED = "[redacted]"
# "Bearer" and the token after it, as a header, a quoted header value or prose would carry it.
_BEARER = re.compile(r"(?i)\bbearer(\s*[:=]\s*|\s+)[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's b64token


class Redactor:
    """`redactor(text)`: the text without the API key or any bearer token."""

    def __init__(self, key: str | None) -> None:
        self._key = key or None

    def __call__(self, text: str) -> str:
        if self._key is not None:
            text = text.replace(self._key, REDACTED)
        return _BEARER.sub(lambda found: f"Bearer{found.group(1)}{REDACTED}", text)

    def key_only(self, text: str) -> str:
        """Only the key removed: for transcript text, where "bearer" is an ordinary word."""
        return text.replace(self._key, REDACTED) if self._key is not None else text
