"""Configuration files of meshroute processes (node, reflector): YAML
validated whole against a pydantic model, every problem reported with the
file and the field; and the sections both processes share (etcd, HTTP)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meshroute.schema_types import field_path
from meshroute.yaml_input import YamlInputError, one_document, read_text


class ConfigError(Exception):
    """An invalid configuration file; the message names file and fields."""


class Section(BaseModel):
    """A settings mapping: unknown fields are errors; values are frozen."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True
    )


class EtcdSection(Section):
    endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"], min_length=1)
    prefix: str = "/meshroute"
    timeout_seconds: float = Field(default=5.0, gt=0, alias="timeoutSeconds")
    # TLS (PEM files) and etcd's own authentication; ``MESHROUTE_ETCD_*``
    # environment variables override each (meshroute.etcd_options)
    ca_file: str | None = Field(default=None, alias="caFile", min_length=1, max_length=4096)
    cert_file: str | None = Field(default=None, alias="certFile", min_length=1, max_length=4096)
    key_file: str | None = Field(default=None, alias="keyFile", min_length=1, max_length=4096)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: str | None = Field(
        default=None, alias="passwordFile", min_length=1, max_length=4096
    )


class HttpSection(Section):
    listen: str = "127.0.0.1:9099"


M = TypeVar("M", bound=BaseModel)


def parse_config(text: str, source: str, model: type[M]) -> M:
    """A YAML configuration file validated whole against ``model``; every
    problem reported on its own line as ``FILE: field.path: message``."""
    try:
        raw = one_document(text, source)
    except YamlInputError as e:
        raise ConfigError(str(e)) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: {field_path(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from e


def load_config(path: str, model: type[M]) -> M:
    try:
        text = read_text(path)
    except YamlInputError as e:
        raise ConfigError(str(e)) from e
    return parse_config(text, path, model)
