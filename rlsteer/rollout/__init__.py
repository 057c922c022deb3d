"""Rollout backends: sample completions from a steered model."""

from rlsteer.rollout.base import Backend, Request, Rollout, SamplingError, SamplingParams
from rlsteer.rollout.hf import HFBackend

__all__ = ["Backend", "HFBackend", "Request", "Rollout", "SamplingError", "SamplingParams"]
