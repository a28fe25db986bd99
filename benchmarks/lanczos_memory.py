"""Peak memory of a 40-step Lanczos run on a 2.0 M-parameter MLP against the size of its basis (40 x d x 4 bytes).
Usage: python benchmarks/lanczos_memory.py LABEL"""
import resource, sys, torch
from torch import nn
from flatlens import Objective, hessian
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2000, 1000), nn.Tanh(), nn.Linear(1000, 10))
x, y = torch.randn(64, 2000), torch.randint(0, 10, (64,))
obj = Objective(model, nn.CrossEntropyLoss(), (x, y))
obj.hvp(torch.randn(obj.num_params))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = hessian.top_eigenvalues(obj, 1, tol=1e-12, max_hvp=40)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(sys.argv[1] if len(sys.argv) > 1 else "run", obj.num_params, "basis MB", 40 * obj.num_params * 4 / 1e6, "peak growth MB", (peak - base) / 1e3, r.n_hvp)
