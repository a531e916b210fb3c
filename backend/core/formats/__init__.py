"""Readers and writers of every file format the product exchanges (numpy + stdlib only, shared with the add-on)."""
