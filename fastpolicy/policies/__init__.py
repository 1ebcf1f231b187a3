"""Policies: the Policy contract, Sessions, and the diffusion teacher and its accelerations."""

from fastpolicy.policies.base import ChunkResult, Policy, PolicyState, Session, StepStats

__all__ = ["ChunkResult", "Policy", "PolicyState", "Session", "StepStats"]
