"""Options of the query page and JSON API (``astreg worker --api-token ...``).

Kept apart from :mod:`streams.web.views` so ``astreg worker --help`` lists them without importing
Faust. Every field is also an ``ASTREG_*`` environment variable (``ASTREG_API_TOKEN``).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from astreg.settings import AstregSettings

__all__ = ["WebSettings", "DEFAULT_TECHNOLOGIES"]

#: Channel technologies tried, in this order, for a bare resource such as ``1001``.
DEFAULT_TECHNOLOGIES: tuple[str, ...] = ("PJSIP", "SIP", "IAX2")


class WebSettings(AstregSettings):
    """How the page and API answer."""

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
    quality_url: str | None = Field(
        None,
        description="Base URL of the alerter's figures (astreg alerts run --alert-metrics-port), e.g. "
        "http://alerter:9464: endpoint rows then carry their call quality. Unset: no quality figures.",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A blank token (--api-token "", or spaces) means "no token", not "the empty token";
        # an empty ASTREG_API_TOKEN= never gets here (AstregSettings: empty = unset).
        if value is None or (isinstance(value, str | SecretStr) and not str(
            value.get_secret_value() if isinstance(value, SecretStr) else value
        ).strip()):
            return None
        return value

    @property
    def technology_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.technologies.split(",") if t.strip())
