"""Wan2.1 network modules (DiT, attention, checkpoint loader; T5, VAE and tokenizers live beside them).

Kept free of imports so that importing one module does not pull in the others.
"""
