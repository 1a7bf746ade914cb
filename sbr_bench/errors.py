"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a file, line or option that the message names."""


class DataFormatError(UserError):
    """A data file does not have the expected format; the message names file and line."""

    def __init__(self, path, message, line=None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line
