"""Test-only helpers that must not depend on the journey package."""
