r"""transcribed: a private, local transcription daemon (inbox -> Qwen3-ASR -> outbox).

How a recording travels, and the room (subpackage) for each step:

    inbox -> intake -> state (a queued job) -> jobs, which runs it:
        audio -> model (or servers) -> output -> disposal,  with host around the daemon

    intake/    sees a file arrive, waits until it is complete, claims it into the work folder
    state/     the job database (an index of what is on disk), the work folder, one instance
    jobs/      runs a claimed job: folder rules, decode, transcribe, publish, dispose
    audio/     decodes any container in a child process; chunks at pauses; memory budget
    model/     the resident Qwen3-ASR (local engine), batching, aligner, speakers, scores
    servers/   the other engine: chunks sent to a pool of vLLM servers
    engines    the engine kinds by name (`settings.engine`): what each needs and makes
    output/    the transcript and its files (txt, json, srt, vtt, tsv), the outbox, search
    disposal/  the original archived, deleted or shredded, once its transcript is durable
    host/      what ties the daemon to the machine: systemd notify, hooks, metrics, network
    files/     names and durable writes that every room uses to touch the disk
    commands/  one-shot transcribe, doctor, bench and the vLLM check (the CLI's verbs)
    web/       the optional web page: status, upload, transcripts, search

At the top: `cli` (the entry point: one module per verb) -> `service` (the one place the
daemon is put together) -> the rooms -> `settings`, `errors`, `logs`, `faults`. Imports only
point down that list (tests/test_layout.py holds them to it).
"""

__version__ = "0.1.0"
