"""The steering core: named sites, vector sets, hooks and circuit patching."""

from rlsteer.steering.constraints import orthonormal_basis, project_out
from rlsteer.steering.hooks import SteeringHandle, steer
from rlsteer.steering.patching import PatchError, patch
from rlsteer.steering.sites import (
    BRANCH_SITES,
    HEAD_SITES,
    PATCH_SITES,
    RESIDUAL_SITES,
    SITES,
    Entry,
    SiteError,
)
from rlsteer.steering.vectors import SteeringVectors, VectorFileError, read_vector_file

__all__ = [
    "BRANCH_SITES", "HEAD_SITES", "PATCH_SITES", "RESIDUAL_SITES", "SITES",
    "Entry", "PatchError", "SiteError", "SteeringHandle", "SteeringVectors", "VectorFileError",
    "orthonormal_basis", "patch", "project_out", "read_vector_file", "steer",
]
