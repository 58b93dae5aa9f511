"""astreg producers (see docs/design.md)."""
