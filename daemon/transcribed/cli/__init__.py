"""The `transcribed` command: one module per verb, each declaring its arguments beside the
function that runs it (`verb.Verb`), and `main`, the loop that turns the declarations into
the parser, runs the verb asked for and maps its errors to exit codes.

The verbs are thin: they read the settings, check what a mistake could be made in, and call
into the rooms below (`commands/` for doctor, bench and one-shot transcribe; `state/` for
the job database; `service` for the daemon; `web/` for the page). Nothing heavy is imported
before the settings, folders and model files are checked: a mistake is reported in about a
second, not after torch has loaded.

The entry point is `cli.main.main` (the console script and `python -m transcribed`); this
package imports nothing, so that `transcribed.cli.main` stays the module.
"""
