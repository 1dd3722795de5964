"""Structured logging: named events, JSON lines off a TTY, readable on a TTY.

Never pass transcript text or audio to a log call; file names go through `names.display_name`.
"""

import logging
import sys
import threading
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route structlog and stdlib logging (transformers, watchdog) to stderr in one format."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO (weights loading, file events); keep their warnings only.
    for noisy in ("transformers", "watchdog", "huggingface_hub", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threading.excepthook = _log_thread_death
    # A library's warning (numpy's overflow, a deprecation) becomes an event like any other,
    # not a raw line on stderr that breaks the JSON log.
    logging.captureWarnings(True)


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    """A thread that dies (e.g. watchdog's observer) is an event in the log, not a bare
    traceback on stderr; the health check notices the dead thread."""
    get_logger(__name__).error(
        "thread.died",
        thread=args.thread.name if args.thread else None,
        error=f"{args.exc_type.__name__}: {args.exc_value}",
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
