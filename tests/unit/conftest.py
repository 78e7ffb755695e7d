"""Fixtures of the unit tests shared across modules: the fake client API (`fake_shoal`)."""

from tests.unit.fake_shoal import addr, authority, context_file, credentials, fake, server  # noqa: F401
