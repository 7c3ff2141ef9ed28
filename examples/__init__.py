"""Worked examples shipped with the edgekd app."""
