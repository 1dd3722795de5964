"""`transcribed doctor`: one line per check of this machine (the checks are
`commands.doctor`)."""

import argparse
import dataclasses

from transcribed.cli.shared import offline_unless, print_result
from transcribed.cli.verb import EXIT_FAILED, JSON, Verb
from transcribed.errors import ConfigError
from transcribed.settings import Settings, load_settings
from transcribed.settings.access import check_state_access


def doctor(args: argparse.Namespace) -> int:
    from transcribed.commands import doctor

    try:
        settings = load_settings(args.config, Settings)
    except ConfigError as error:
        findings = [doctor.Finding("config", "fail", str(error), "fix the setting named above")]
    else:
        # Every later check would answer for the wrong user: only the right one helps.
        check_state_access(settings.state_dir)
        offline_unless(False)  # doctor only looks: never fetch anything
        findings = [doctor.Finding("config", "ok", "the configuration is valid")]
        findings += doctor.diagnose(settings)
    rows = [dataclasses.asdict(finding) for finding in findings]
    print_result(rows, args.json, doctor.render(findings))
    return EXIT_FAILED if any(finding.level == "fail" for finding in findings) else 0


VERB = Verb(
    "doctor",
    help="check this machine: GPU, model files, folders, inotify, network isolation",
    description="Check everything the daemon needs and print one line per check "
    "(ok / warn / fail) with what to do. Exits 1 when any check fails. A model is ok "
    "only when `run` would load it.",
    run=doctor,
    arguments=(JSON,),
)
