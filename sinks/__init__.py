"""astreg sinks (see docs/design.md)."""
