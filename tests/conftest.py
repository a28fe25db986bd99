import os
import tempfile

import pytest
import torch

os.environ.setdefault("FLATLENS_QUIET", "1")
# the evaluator's recorded layout picks go to a throwaway folder, not the user's ~/.cache
os.environ.setdefault("FLATLENS_CACHE_DIR", tempfile.mkdtemp(prefix="flatlens-test-cache-"))
torch.set_num_threads(2)


def dense_hessian(obj):
    """Exact Hessian of an Objective via torch.func.hessian over the flat parameter vector."""
    theta0 = obj.flatten(obj.center).detach()

    def f(theta):
        return obj.value(obj.unflatten(theta))

    return torch.func.hessian(f)(theta0)


@pytest.fixture
def dense():
    return dense_hessian
