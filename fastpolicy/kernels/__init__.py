"""Numba kernels: pure functions on numpy arrays (window indices, ray casting, batched dynamics).

Modules here import numba at import time, so import them only where the kernel is needed.
"""
