"""Typed errors for bad input. The library raises them naming what is wrong in its own terms (a config
key, a file and line); `sbr_bench.cli` alone words them as command-line options and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: a file, line, setting or option that the message names."""


class ConfigError(UserError):
    """A setting of an experiment or model is wrong. `key` names it as in an experiment file: `models`,
    `seeds`, `dataset.valid_fraction`, `overrides.lr` (every model), `model_overrides.srgnn.lr` (one model).

    `value` is the value given (when there is one) and `source` the file it came from (when it did).
    """

    NO_VALUE = object()

    def __init__(self, key: str, message: str, value=NO_VALUE, source=None):
        super().__init__(key, message)
        self.key, self.message, self.value, self.source = key, message, value, source

    def __reduce__(self):  # pickled whole (torchrun ranks pass errors on to each other)
        value = None if self.value is ConfigError.NO_VALUE else self.value
        return _config_error, (self.key, self.message, self.value is not ConfigError.NO_VALUE, value, self.source)

    def __str__(self) -> str:
        shown = self.key if self.value is ConfigError.NO_VALUE else f"{self.key} = {self.value!r}"
        return f"{self.source}: {shown}: {self.message}" if self.source else f"{shown}: {self.message}"


class DataFormatError(UserError):
    """A data file does not have the expected format; the message names file and line."""

    def __init__(self, path, message, line=None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


def _config_error(key, message, has_value, value, source):
    return ConfigError(key, message, value if has_value else ConfigError.NO_VALUE, source)
