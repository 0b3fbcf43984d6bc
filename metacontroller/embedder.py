"""The internal sequence embedder s = f_emb(e_{1:T}) (SPEC §3, paper D.2).

The paper parameterises it as a Hawk SSM. Ours is Hawk's recurrence, the
real-gated linear recurrent unit (RG-LRU), on its own:

    r_t = σ(W_r e_t),  i_t = σ(W_i e_t),  a_t = exp(-c · softplus(Λ) · r_t)
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ W_x e_t)

It is linear in h, so it runs as a parallel associative scan (no step-by-step
backward, unlike a GRU). The summary is h at each row's last valid step, so
padding past a row's length never reaches it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from assoc_scan import AssocScan
from torch import Tensor, nn

GATE_SHARPNESS = 8.  # c in Hawk


class SequenceEmbedder(nn.Module):
    def __init__(self, dim_model: int, dim_summary: int):
        super().__init__()
        self.project = nn.Linear(dim_model, dim_summary * 3)
        # Λ such that a = σ(Λ)^c starts spread over [0.9, 0.999]: long memory by default, as in Hawk
        a = torch.empty(dim_summary).uniform_(0.9, 0.999)
        self.log_decay = nn.Parameter(torch.log(a ** (1 / GATE_SHARPNESS) / (1 - a ** (1 / GATE_SHARPNESS))))
        self.scan = AssocScan()

    def forward(self, stream: Tensor, lens: Tensor) -> Tensor:
        """stream (b, t, d), lens (b,) -> summary (b, n_s)."""
        recurrence_gate, input_gate, values = self.project(stream).chunk(3, dim = -1)
        log_a = -GATE_SHARPNESS * F.softplus(-self.log_decay) * torch.sigmoid(recurrence_gate)  # log σ(Λ)^{c r}
        a = log_a.exp()
        inputs = (-torch.expm1(2 * log_a)).clamp_min(1e-12).sqrt() * torch.sigmoid(input_gate) * values
        hidden = self.scan(a, inputs)                                                          # (b, t, n_s)
        index = (lens - 1).clamp_min(0)[:, None, None].expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index)[:, 0]
