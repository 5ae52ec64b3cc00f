"""Toy-scale reproductions of the papers' headline effects (``fastrl experiment``)."""
