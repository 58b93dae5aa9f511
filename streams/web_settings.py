"""Options of the query page and JSON API (``astreg worker --api-token ...``).

Kept apart from :mod:`streams.views` so ``astreg worker --help`` lists them without importing
Faust. Every field is also an ``ASTREG_*`` environment variable (``ASTREG_API_TOKEN``).
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WebSettings", "DEFAULT_TECHNOLOGIES"]

#: Channel technologies tried, in this order, for a bare resource such as ``1001``.
DEFAULT_TECHNOLOGIES: tuple[str, ...] = ("PJSIP", "SIP", "IAX2")


class WebSettings(BaseSettings):
    """How the page and API answer."""

    model_config = SettingsConfigDict(env_prefix="ASTREG_", extra="ignore", frozen=True)

    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the API requires (unset: open). /healthz, /readyz, /metrics and "
        "the page's static shell stay open.",
    )
    technologies: str = Field(
        ",".join(DEFAULT_TECHNOLOGIES),
        description="Technologies tried, in order, for a bare endpoint name such as 1001.",
    )
    web_snapshot_ms: int = Field(
        1000, ge=0, description="Maximum age of the per-worker row snapshot behind lists and counts (ms)."
    )
    web_peer_timeout: float = Field(3.0, gt=0, description="Timeout of a request to another worker (s).")

    @property
    def technology_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.technologies.split(",") if t.strip())
