"""rlsteer: train, evaluate and dissect RL-trained steering vectors on frozen language models."""

from rlsteer.models import load_model

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]
