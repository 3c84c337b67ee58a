"""Report templates (package data)."""
