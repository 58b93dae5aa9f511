"""astreg streams (see docs/design.md)."""
