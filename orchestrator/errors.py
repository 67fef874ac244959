"""Errors that reach the admin as one clear line and a distinct exit code."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_NOT_READY = 75  # EX_TEMPFAIL: data requested from cold storage, try again later
EXIT_INTERRUPTED = 130


class OrchestratorError(Exception):
    """Base error: its message is the one line the admin sees."""

    exit_code = EXIT_FAILED


class ConfigError(OrchestratorError):
    """A setting is unknown, of the wrong type, or points at something unusable."""

    exit_code = EXIT_CONFIG


class LockedError(OrchestratorError):
    """Another run holds the lock this job needs."""

    exit_code = EXIT_LOCKED


class CommandError(OrchestratorError):
    """A command we ran exited non-zero."""

    def __init__(self, argv, returncode, output="", where="local"):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        self.where = where
        tail = " | ".join(line for line in output.strip().splitlines()[-3:] if line.strip())
        super().__init__(
            f"{where}: {self.argv[0]} exited {returncode}" + (f": {tail}" if tail else "")
        )


class NotReadyError(OrchestratorError):
    """Archived data was requested from cold storage and is not readable yet."""

    exit_code = EXIT_NOT_READY


class Interrupted(OrchestratorError):
    """SIGTERM (Jenkins abort) or Ctrl-C: raised in the main thread so cleanup runs."""

    exit_code = EXIT_INTERRUPTED
