"""Bidirectional Mamba mixer ("v2") with the parameter names and initialisation of video-mamba-suite's Mamba fork.

One shared ``in_proj`` produces x and z; a forward branch (``conv1d``/``x_proj``/``dt_proj``/``A_log``/``D``) and a
backward branch (the ``_b`` copies, run on x and z reversed along the sequence and reversed back) each do
causal depthwise conv + SiLU -> x_proj -> (dt, B, C) -> softplus(dt_proj) -> selective scan with D and SiLU(z)
gating; ``out_proj`` maps their sum (TimeMamba) or mean (ViViM, ``if_divide_out``) back to ``d_model``.
Runs everywhere: the scan goes through :func:`lavila.models.ssm.selective_scan` (CUDA kernels when present,
pure PyTorch otherwise) and the conv through ``causal_conv1d_fn`` on CUDA when installed, else ``F.conv1d``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lavila.models.ssm import selective_scan

__all__ = ["BiMambaMixer"]


@lru_cache(maxsize=1)
def _causal_conv1d_fn():
    """causal_conv1d's CUDA kernel, or None when it cannot be imported (imported lazily, once)."""
    if not torch.cuda.is_available():
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


def _fp32_or_wider(t: Tensor) -> Tensor:
    """The scan parameters in fp32 (as the fork's ``.float()``), without truncating fp64 ones."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class BiMambaMixer(nn.Module):
    """Mamba block mixer with a forward and a backward scan ("bimamba v2"); (B, L, d_model) -> (B, L, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        if_divide_out: bool = False,
        bimamba_type: str = "v2",
        layer_idx: int | None = None,
        scan_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if bimamba_type != "v2":
            raise ValueError(f"BiMambaMixer implements bimamba_type='v2' only (as the released models), "
                             f"got {bimamba_type!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.if_divide_out = if_divide_out
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend
        d_inner, rank = self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias,
                                **factory)
        self.x_proj = nn.Linear(d_inner, rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True, **factory)
        self._init_dt_proj(self.dt_proj, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.A_log = self._s4d_real_log(d_inner, d_state, device)
        self.D = self._ones(d_inner, device)

        # Backward branch: as the fork, dt_proj_b keeps PyTorch's default Linear init (no special dt init).
        self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias,
                                  **factory)
        self.x_proj_b = nn.Linear(d_inner, rank + 2 * d_state, bias=False, **factory)
        self.dt_proj_b = nn.Linear(rank, d_inner, bias=True, **factory)
        self.A_b_log = self._s4d_real_log(d_inner, d_state, device)
        self.D_b = self._ones(d_inner, device)

        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **factory)

    @staticmethod
    def _init_dt_proj(proj: nn.Linear, dt_min: float, dt_max: float, dt_init: str, dt_scale: float,
                      dt_init_floor: float) -> None:
        std = proj.in_features ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                proj.weight.fill_(std)
            else:
                proj.weight.uniform_(-std, std)
            # dt ~ log-uniform(dt_min, dt_max), floored; the bias is softplus^-1(dt) so softplus(bias) = dt.
            log_dt = torch.rand(proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=dt_init_floor)
            proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        proj.bias._no_reinit = True

    @staticmethod
    def _s4d_real_log(d_inner: int, d_state: int, device) -> nn.Parameter:
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
        p = nn.Parameter(torch.log(a))
        p._no_weight_decay = True
        return p

    @staticmethod
    def _ones(d_inner: int, device) -> nn.Parameter:
        p = nn.Parameter(torch.ones(d_inner, device=device))
        p._no_weight_decay = True
        return p

    def forward(self, hidden_states: Tensor) -> Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"BiMambaMixer expects (batch, length, {self.d_model}), got {tuple(hidden_states.shape)}")
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2*Di, L)
        y_f = self._branch(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_b = self._branch(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        y = y_f + y_b.flip(-1)
        if self.if_divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def _branch(self, xz: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor,
                D: Tensor) -> Tensor:
        """One direction: (B, 2*Di, L) -> scan output gated by SiLU(z), (B, Di, L)."""
        batch, _, length = xz.shape
        x, z = xz.chunk(2, dim=1)
        x = self._conv_silu(x, conv)
        x_dbl = x_proj(x.transpose(1, 2).reshape(batch * length, self.d_inner))  # (B*L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).view(batch, length, self.d_inner).transpose(1, 2)
        B = B.view(batch, length, self.d_state).transpose(1, 2)
        C = C.view(batch, length, self.d_state).transpose(1, 2)
        A = -torch.exp(_fp32_or_wider(A_log))
        return selective_scan(x, delta, A, B, C, _fp32_or_wider(D), z=z, delta_bias=_fp32_or_wider(dt_proj.bias),
                              delta_softplus=True, backend=self.scan_backend)

    def _conv_silu(self, x: Tensor, conv: nn.Conv1d) -> Tensor:
        fn = _causal_conv1d_fn() if x.is_cuda else None
        if fn is not None:
            return fn(x.contiguous(), conv.weight.squeeze(1), conv.bias, activation="silu")
        # Causal depthwise conv: left pad d_conv-1, which equals the fork's symmetric padding cut to the first L.
        out = F.conv1d(F.pad(x, (self.d_conv - 1, 0)), conv.weight, conv.bias, groups=self.d_inner)
        return F.silu(out)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"if_divide_out={self.if_divide_out}, layer_idx={self.layer_idx}")
