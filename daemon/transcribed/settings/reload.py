"""What a reload (SIGHUP, `systemctl reload transcribed`) does with a new configuration: the
settings whose declaration says a reload applies them (`Doc(reload=True)`) take their new
values; a change to any other is named as waiting for a restart."""

from dataclasses import dataclass

from transcribed.settings import Settings
from transcribed.settings.declared import doc_of

# The settings a reload applies to the running daemon (to jobs started after it).
RELOADABLE = frozenset(
    name for name, field in Settings.model_fields.items() if doc_of(field).reload
)


@dataclass(frozen=True)
class Reload:
    settings: Settings  # the running settings with the reloadable changes applied
    applied: list[str]  # the changed settings it applies, by name
    needs_restart: list[str]  # the changed settings that wait for the next start


def reload(running: Settings, new: Settings) -> Reload:
    old = running.model_dump()
    changed = sorted(name for name, value in new.model_dump().items() if old[name] != value)
    live = {name: getattr(new, name) for name in RELOADABLE}
    return Reload(
        running.model_copy(update=live),
        [name for name in changed if name in RELOADABLE],
        [name for name in changed if name not in RELOADABLE],
    )
