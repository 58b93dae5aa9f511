"""Settings of the sinks (pydantic-settings, turned into click options by astreg.options).

Kept apart from the store modules so ``astreg sink sql --help`` builds every subcommand's
options without importing SQLAlchemy, redis-py or the AMI client.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from astreg.settings import AstregSettings

__all__ = ["RunnerSettings", "SqlSettings", "RedisSettings", "AstDbSettings"]


class RunnerSettings(AstregSettings):
    """How a sink consumes the locations topic."""

    model_config = SettingsConfigDict(env_prefix="ASTREG_SINK_")

    group: str | None = Field(None, description="Consumer group (default astreg-sink-<kind>; the AstDB sink: astreg-sink-astdb-<node ids>, one group per node).")
    rebuild: bool = Field(False, description="Read the whole topic again and remove stale keys from the store.")
    batch_size: int = Field(5000, ge=1, description="Most records written in one batch.")
    batch_linger_ms: int = Field(50, ge=0, description="How long to wait for a batch to fill (ms).")
    backoff_max: float = Field(30.0, gt=0, description="Longest pause between retries of a store that is down (s).")
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics on this port (unset = off).")


class SqlSettings(AstregSettings):
    """Where the SQL sink writes."""

    model_config = SettingsConfigDict(env_prefix="ASTREG_SQL_")

    url: str = Field(
        "sqlite+aiosqlite:///astreg.sqlite",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE, postgresql+asyncpg://..., mysql+asyncmy://...",
    )
    write_timeout: float = Field(10.0, gt=0, description="A write slower than this counts as store unavailable (s).")
    chunk: int = Field(5000, ge=1, description="Rows per INSERT statement.")


class RedisSettings(AstregSettings):
    """Where the Redis sink writes."""

    model_config = SettingsConfigDict(env_prefix="ASTREG_REDIS_")

    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss://).")
    key_prefix: str = Field("astreg:", description="Prefix of every key the sink writes.")
    timeout: float = Field(5.0, gt=0, description="Socket timeout; slower answers count as store unavailable (s).")


class AstDbSettings(AstregSettings):
    """Which Asterisk nodes the AstDB sink writes to, through AMI."""

    model_config = SettingsConfigDict(env_prefix="ASTREG_ASTDB_")

    ami: str = Field("127.0.0.1:5038", description="AMI address(es) HOST:PORT, comma separated: every node gets every key.")
    ami_user: str = Field("astreg", description="AMI user (manager.conf section) with write=system.")
    ami_secret: SecretStr = Field(SecretStr(""), description="AMI secret (never logged).")
    family: str = Field("astreg", description="AstDB family the sink owns (it removes unknown keys in it).")
    window: int = Field(256, ge=1, description="AMI actions in flight per node.")
    timeout: float = Field(10.0, gt=0, description="An AMI answer slower than this counts as node unavailable (s).")

    @field_validator("ami")
    @classmethod
    def _check_ami(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{part.strip()!r} is not HOST:PORT")
        return value

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for part in self.ami.split(","):
            host, _, port = part.strip().rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out
