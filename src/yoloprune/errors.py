"""The project's error types. Each message names the file (and line, where there is one)."""

from __future__ import annotations

from pathlib import Path


class YoloPruneError(Exception):
    """Base class: bad input that the user can fix. The CLI prints it without a traceback."""


def _located(message: str, path: str | Path | None, line: int | None) -> str:
    if path is None:
        return message
    where = f"{path}:{line}" if line is not None else f"{path}"
    return f"{where}: {message}"


class CfgError(YoloPruneError):
    """A darknet .cfg file that cannot be parsed or built."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        super().__init__(_located(message, path, line))


class WeightsError(YoloPruneError):
    """A .weights or .pt file that does not match its cfg or is not a valid checkpoint."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path, self.reason = path, message
        super().__init__(_located(message, path, None))


class DataError(YoloPruneError):
    """A dataset file (.data, image list, label, image, annotation) that is missing or malformed."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        super().__init__(_located(message, path, line))


class ExportError(YoloPruneError):
    """An exported model that does not reproduce the PyTorch model."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path, self.reason = path, message
        super().__init__(_located(message, path, None))


class SettingsError(YoloPruneError):
    """A setting (a field of a settings dataclass, a command-line flag) with a value it cannot take."""

    def __init__(self, setting: str, message: str):
        self.setting, self.reason = setting, message
        super().__init__(f"{setting}: {message}")
