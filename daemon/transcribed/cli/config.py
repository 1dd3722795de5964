"""`transcribed config [show]`: every setting, its effective value and where it came from."""

import argparse
import json

from transcribed.cli.shared import print_result
from transcribed.cli.verb import JSON, Verb
from transcribed.settings import Settings, load_settings, setting_sources

_DESCRIPTION = (
    "Every setting with its effective value and its source: an environment "
    "variable, the config file, or the default."
)


def show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    sources = setting_sources(args.config, settings)
    values = settings.model_dump(mode="json")
    values["output_mode"] = f"{settings.output_mode:04o}"
    rows = {name: {"value": values[name], "source": sources[name]} for name in values}
    width = max(map(len, rows))
    text = "\n".join(
        f"{name:<{width}}  {json.dumps(row['value'])}  ({row['source']})"
        for name, row in rows.items()
    )
    print_result(rows, args.json, text)
    return 0


SHOW = Verb(
    "show",
    help="every setting, its value and where it came from (the default action)",
    description=_DESCRIPTION,
    run=show,
    arguments=(JSON,),
)

VERB = Verb(
    "config",
    help="show the effective configuration (`config show`)",
    description=_DESCRIPTION,
    run=show,  # `config` alone shows it too
    arguments=(JSON,),
    actions=(SHOW,),
)
