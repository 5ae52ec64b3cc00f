"""Triton kernels, installed as ``fastrl.kernels``: one module per kernel family.

Imported lazily by the ops that use them, so fastrl works where Triton is absent.
"""
