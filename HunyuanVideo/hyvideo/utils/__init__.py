"""HunyuanVideo utilities."""
