"""Adapters to other frameworks, each import-guarded: fastrl imports without them."""
