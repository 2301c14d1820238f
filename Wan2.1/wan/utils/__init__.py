"""Wan2.1 utilities."""
