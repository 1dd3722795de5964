"""`output_mode` as people write it: octal digits, as chmod takes them, whether they come
from the config file or the environment."""

import re

_OCTAL_MODE = re.compile(r"(?:0o)?([0-7]{3,4})")


def file_mode(value: object) -> int:
    """Permission bits from an octal string, as chmod takes them ("0640", "640"); ValueError
    for anything else. (An int is already bits: the default, or a program's value.)"""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError('must be an octal mode in quotes, like "0640"')
    if isinstance(value, str):
        match = _OCTAL_MODE.fullmatch(value.strip().lower())
        if match is None:
            raise ValueError(f'{value!r} is not an octal mode: 3 or 4 digits 0-7, like "0640"')
        value = int(match.group(1), 8)
    if value > 0o777:
        raise ValueError(
            f"{value:04o} sets setuid, setgid or sticky bits, which transcripts must not have; "
            'use read and write bits only, like "0640"'
        )
    if not value & 0o400:
        raise ValueError(
            f"{value:04o} would make transcripts unreadable by their owner; "
            'give the owner read permission, like "0640"'
        )
    return value


def number_mode(number: object) -> str | None:
    """Why an output_mode written as a TOML number is refused, or None when it is not one:
    640 and 0o640 are different numbers to TOML (0o640 is 416), either could be what was
    meant, and the environment's "640" is octal."""
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    digits = f"{number:04d}" if set(str(number)) <= set("01234567") else "0640"
    return (
        f"output_mode = {number} is a number, which TOML does not read as octal (0o640 is 416 "
        f'to it); write the mode in quotes, as chmod takes it: output_mode = "{digits}"'
    )
