"""Helpers shared by tests that are not tests themselves."""
