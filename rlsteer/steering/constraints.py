"""Orthogonality constraint for steering vectors (paper Appendix F; docs/semantics.md#orthogonal).

A constrained vector is parameterised as s = (I − B Bᵀ) u with B an orthonormal basis of fixed vectors and
u the trained parameter, so s stays orthogonal to them at every step (the projection is applied in fp32
before any cast to the model dtype).

Example:
    >>> import torch
    >>> B = orthonormal_basis(torch.tensor([[1.0, 0.0, 0.0]]))
    >>> project_out(torch.tensor([2.0, 3.0, 0.0]), B)
    tensor([0., 3., 0.])
"""

from __future__ import annotations

import torch

from rlsteer.errors import RlsteerError


class ConstraintError(RlsteerError):
    pass


def orthonormal_basis(vectors: torch.Tensor, *, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis [d, k] (columns) of the span of ``vectors`` [k, d], by QR in fp64 then fp32.

    Vectors that add no new direction (zero or linearly dependent, judged by ``rtol`` relative to the
    largest diagonal entry of R) are dropped; an all-zero input is an error.
    """
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise ConstraintError(f"expected vectors of shape [k, d], got {tuple(vectors.shape)}")
    q, r = torch.linalg.qr(vectors.detach().to(torch.float64).T)  # q: [d, k], r: [k, k]
    diag = r.diagonal().abs()
    if diag.numel() == 0 or float(diag.max()) == 0.0:
        raise ConstraintError("cannot constrain against zero vectors: they span no direction")
    keep = diag > rtol * diag.max()
    return q[:, keep].to(torch.float32).contiguous()


def project_out(u: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(I − B Bᵀ) u for u [d] and an orthonormal basis B [d, k]; differentiable in u."""
    basis = basis.to(u.dtype)
    return u - basis @ (basis.T @ u)
