"""rlsteer: train, evaluate and dissect RL-trained steering vectors on frozen language models.

Example:
    >>> import torch, rlsteer
    >>> model, tok = rlsteer.load_model("tiny-random-llama")
    >>> vectors = rlsteer.SteeringVectors.for_model(model, layers=[3])
    >>> with rlsteer.steer(model, vectors):
    ...     logits = model(tok("1 + 1 =", return_tensors="pt").input_ids).logits
"""

__version__ = "0.1.0"

from rlsteer.architectures import architecture_of
from rlsteer.models import load_model
from rlsteer.steering import Entry, SteeringVectors, patch, steer

__all__ = ["Entry", "SteeringVectors", "__version__", "architecture_of", "load_model", "patch", "steer"]
