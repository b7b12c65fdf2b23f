"""Suite-wide settings: one torch thread (the suite shares 2 cores with its own servers, and
OpenMP threads spinning against each other made single tests several times slower)."""

import torch

torch.set_num_threads(1)
