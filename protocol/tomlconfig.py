"""TOML files validated by pydantic models, with errors that name the field and the reason.

Job specs, node and aggregator configs and policies are written by people; a mistake must come
back as ``job.toml: rounds: Input should be greater than or equal to 1`` — not a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config, spec or policy file that cannot be used; ``problems`` lists (field, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {field}: {reason}" for field, reason in problems)
        super().__init__(f"{source} is not valid:\n{lines}")


def missing_file_hint(path: Path | str) -> str:
    """A missing file, said so a person in the wrong directory sees it at once."""
    path = Path(path)
    where = "" if path.is_absolute() else f" (relative paths are taken from the current directory, {Path.cwd()})"
    return f"{path} does not exist{where}; run the command from the directory that holds it, or give its full path"


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validate_model(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [(_field(tuple(e["loc"])), e["msg"]) for e in exc.errors()]
        raise ConfigError(source, problems) from None


def parse_toml_text(model: type[ModelT], text: str, source: str) -> ModelT:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(syntax)", str(exc))]) from None
    return validate_model(model, data, source)


def load_toml(model: type[ModelT], path: Path | str) -> ModelT:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), [("(file)", missing_file_hint(path))]) from None
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_toml_text(model, text, str(path))
