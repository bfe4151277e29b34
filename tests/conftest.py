import os
import sys
from pathlib import Path

import torch

# Test modules import shared helpers from each other (e.g. test_methods.make_net).
sys.path.insert(0, str(Path(__file__).parent))
# ... and the benchmarks package lives at the repository root, next to ddc/.
sys.path.insert(1, str(Path(__file__).parent.parent))

# Each xdist worker gets one intra-op thread: two workers on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
