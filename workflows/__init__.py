"""Deterministic workflow code only: one module per family, plus the gate they share."""
