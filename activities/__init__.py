"""Side effects, one module per concern. Workflows reach the outside world only through these."""
