"""Chunked pure-PyTorch selective scan for accelerators: a number of tensor operations that does not grow with L.

The step loop of :mod:`lavila.models.ssm` advances one time step per operation, so on a GPU a ViViM-T scan
(L = 3,152) issues thousands of kernel launches. Here the sequence is cut into chunks of K = :data:`CHUNK` steps
(K = L when shorter) and every chunk advances at once:

* inside the chunks: K - 1 in-place steps ``h[t] += dA[t] * h[t-1]``, each over all chunks together (zero state at
  each chunk start);
* across chunks: the state entering chunk c is ``sum_{c' < c} exp(A * seg[c-1, c']) * h_end[c']``, where
  ``seg[m, c']`` sums the chunks' total dt over chunks c'+1..m. The segment sums are a masked cumsum (each entry adds
  only its own terms, and with dt >= 0, A < 0 every exponent is <= 0, so nothing overflows), the carry one batched
  matmul over the nc x nc chunk pairs;
* the entering state reaches every step of its chunk through the running product of dA (one cumprod).

The backward recomputes a block's states from the inputs (nothing else is saved) and runs the adjoint recurrence
the same way backwards. Work is split into blocks (ranges of batch rows and channels) whose state tensors hold at
most ``block`` elements, the same budget as the step loop's accelerator blocks had. The aten operations of one
fwd+bwd call are at most ``OPS_PER_BLOCK_STEP * K + OPS_PER_BLOCK`` per block plus ``OPS_PER_CALL`` (measured with
torch.profiler, views included; ``tests/test_ssm_chunked.py`` checks it): independent of L for a given block
count; a call needs more than one block only when its (L x rows x channels x n) states exceed the budget, and then
every block's operations are budget-sized, not launch-bound.

Layout as in the step loop: time-major ``dt, dtu, u: (l, b, d)``, ``B, C: (l, b, n)``, ``A: (d, n)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CHUNK", "chunk_plan", "chunked_forward", "chunked_backward", "count_aten_ops", "op_bound"]

CHUNK = 64
# The stated bound on the aten ops of one fwd+bwd call, views included (torch.profiler on CPU; checked by
# tests/test_ssm_chunked.py): per block 15 per in-chunk step (3 addcmul_ kernels, 12 views: the forward loop, its
# recomputation and the adjoint loop) and ~620 others (measured); ~135 per call. With K = 64: <= 1,910 for one block.
OPS_PER_BLOCK_STEP = 15
OPS_PER_BLOCK = 800
OPS_PER_CALL = 150


def chunk_plan(batch: int, d: int, n: int, length: int, block: int, chunk: int | None = None) -> tuple[int, int, int]:
    """(K, batch rows per block, channels per block): a block's (K x nc x rows x channels x n) states and its
    (nc x nc x rows x channels x n) chunk-pair decays each hold at most ``block`` elements (K = ``chunk`` or
    :data:`CHUNK`, at most L); a single (row, channel) pair larger than that is a block of its own."""
    k = max(1, min(CHUNK if chunk is None else chunk, length))
    nc = -(-length // k)
    per_pair = n * max(nc * k, nc * nc)
    channels = d if per_pair * d <= block else max(1, block // per_pair)
    rows = max(1, min(batch, block // (per_pair * channels)))
    return k, rows, channels


def op_bound(batch: int, d: int, n: int, length: int, block: int, chunk: int | None = None) -> int:
    """The stated upper bound on the aten operations of one fwd+bwd call of the chunked scan."""
    k, rows, channels = chunk_plan(batch, d, n, length, block, chunk)
    blocks = -(-batch // rows) * -(-d // channels)
    return blocks * (OPS_PER_BLOCK_STEP * k + OPS_PER_BLOCK) + OPS_PER_CALL


def _to_chunks(x: Tensor, k: int) -> Tensor:
    """(l, ...) -> (k, nc, ...) contiguous, zero-padded at the end (dt = 0 and input 0: the state just carries)."""
    length, rest = x.shape[0], x.shape[1:]
    full, tail = divmod(length, k)
    if not tail:
        return x.view(full, k, *rest).transpose(0, 1).contiguous()
    # no torch.cat: on CPU it splits large inputs into one narrow per piece, an op count that would follow L
    out = x.new_empty(k, full + 1, *rest)
    out.transpose(0, 1)[:full] = x[: full * k].view(full, k, *rest)
    out[:tail, full] = x[full * k:]
    out[tail:, full] = 0
    return out


def _from_chunks(x: Tensor, length: int) -> Tensor:
    """(k, nc, ...) -> (l, ...)."""
    k, nc = x.shape[:2]
    return x.transpose(0, 1).reshape(nc * k, *x.shape[2:])[:length]


def _chunk_pair_decays(total: Tensor, A: Tensor) -> Tensor:
    """E[m, c] = exp(A * sum_{j=c+1..m} total[j]) for c <= m, 0 above; total: (nc, r, d) -> (nc, nc, r, d, n)."""
    nc = total.shape[0]
    pairs = torch.ones(nc, nc, dtype=torch.bool, device=total.device)
    later = pairs.tril(-1)[:, :, None, None]  # [j, c]: j > c
    seg = torch.where(later, total[:, None], 0).cumsum(0)  # seg[m, c]: sum over c < j <= m, only its own terms
    missing = pairs.triu(1)[:, :, None, None, None]  # c > m
    return (seg[..., None] * A).masked_fill_(missing, -torch.inf).exp_()


def _block_states(dt: Tensor, dtu: Tensor, Bc: Tensor, A: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """dA, the states h (k, nc, r, d, n) and the state entering each chunk (nc, r, d, n; None for one chunk);
    dt, dtu: (k, nc, r, d), Bc: (k, nc, r, n), A: (d, n). At most three state-sized tensors at a time."""
    k, nc = dt.shape[:2]
    dA = (dt[..., None] * A).exp_()
    h = dtu[..., None] * Bc[:, :, :, None, :]
    hs, dAs = h.unbind(0), dA.unbind(0)  # one op for all the views of the loop
    for t in range(1, k):
        hs[t].addcmul_(dAs[t], hs[t - 1])
    if nc == 1:
        return dA, h, None
    # full state at each chunk's last step (elementwise, not einsum: a CPU bmm runs one aten op per batch entry)
    ends = _chunk_pair_decays(dt.sum(0), A).mul_(h[-1]).sum(1)
    h_in = torch.zeros_like(ends)
    h_in[1:] = ends[:-1]
    # the entering state reaches step t of its chunk decayed by exp(A * (dt[0] + .. + dt[t]))
    h.addcmul_((dt.cumsum(0)[..., None] * A).exp_(), h_in)
    return dA, h, h_in


def _blocks(batch: int, d: int, rows: int, channels: int):
    for b0 in range(0, batch, rows):
        for d0 in range(0, d, channels):
            yield slice(b0, min(batch, b0 + rows)), slice(d0, min(d, d0 + channels))


def chunked_forward(dt: Tensor, dtu: Tensor, Bt: Tensor, Ct: Tensor, A: Tensor, block: int,
                    chunk: int | None = None) -> Tensor:
    """y[t] = <C[t], h[t]> (l, b, d) of the recurrence h[t] = exp(dt[t] A) h[t-1] + dtu[t] B[t]."""
    length, batch, d = dt.shape
    k, rows, channels = chunk_plan(batch, d, A.shape[1], length, block, chunk)
    y = torch.empty_like(dt)
    for bs, ds in _blocks(batch, d, rows, channels):
        Bc, Cc = _to_chunks(Bt[:, bs], k), _to_chunks(Ct[:, bs], k)
        h = _block_states(_to_chunks(dt[:, bs, ds], k), _to_chunks(dtu[:, bs, ds], k), Bc, A[ds])[1]
        y[:, bs, ds] = _from_chunks(torch.matmul(h, Cc[..., None])[..., 0], length)
    return y


def chunked_backward(dt: Tensor, dtu: Tensor, ut: Tensor, Bt: Tensor, Ct: Tensor, A: Tensor, gy: Tensor,
                     block: int, chunk: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (u through dt*u*B only, dt, B, C, A) of ``chunked_forward`` for the output gradient gy (l, b, d)."""
    length, batch, d = dt.shape
    k, rows, channels = chunk_plan(batch, d, A.shape[1], length, block, chunk)
    gu, gdt = torch.empty_like(dt), torch.empty_like(dt)
    gB, gC, gA = torch.zeros_like(Bt), torch.zeros_like(Ct), torch.zeros_like(A)
    for bs, ds in _blocks(batch, d, rows, channels):
        dtc, dtuc, gyc = (_to_chunks(t[:, bs, ds], k) for t in (dt, dtu, gy))
        Bc, Cc = _to_chunks(Bt[:, bs], k), _to_chunks(Ct[:, bs], k)
        Ab = A[ds]
        dA, h, h_in = _block_states(dtc, dtuc, Bc, Ab)
        # adjoint state g[t] = C[t] gy[t] + dA[t+1] g[t+1]: first inside each chunk, then the carry from later chunks
        g = gyc[..., None] * Cc[:, :, :, None, :]
        gs, dAs = g.unbind(0), dA.unbind(0)
        for t in range(k - 2, -1, -1):
            gs[t].addcmul_(dAs[t + 1], gs[t + 1])
        del gs, dAs  # views: they would keep the storage alive
        if h_in is not None:
            sent = dA[0] * g[0]  # what chunk c passes to the last step of chunk c-1
            sent[:-1] = sent[1:].clone()
            sent[-1] = 0
            g_in = _chunk_pair_decays(dtc.sum(0), Ab).mul_(sent[:, None]).sum(0)
            # ... reaching step t < k-1 of chunk c decayed by exp(A * (dt[t+1] + .. + dt[k-1]))
            later = dtc[1:].flip(0).cumsum(0).flip(0)
            g[:-1].addcmul_((later[..., None] * Ab).exp_(), g_in)
            g[-1].add_(g_in)
        gC[:, bs] += _from_chunks(torch.matmul(h.transpose(-1, -2), gyc[..., None])[..., 0], length)
        gdBu = torch.matmul(g, Bc[..., None])[..., 0]  # sum over n of g * B
        gB[:, bs] += _from_chunks(torch.matmul(g.transpose(-1, -2), dtuc[..., None])[..., 0], length)
        # w = g * dA * h[t-1]: the gradient with respect to dt * A through exp
        w = g.mul_(dA)
        w[1:].mul_(h[:-1])
        if h_in is None:
            w[0].zero_()
        else:
            w[0].mul_(h_in)
        del dA, h, g
        uc = _to_chunks(ut[:, bs, ds], k)
        gdt[:, bs, ds] = _from_chunks((w * Ab).sum(-1).addcmul_(gdBu, uc), length)
        gu[:, bs, ds] = _from_chunks(gdBu.mul_(dtc), length)
        gA[ds] += w.mul_(dtc[..., None]).sum((0, 1, 2))
    return gu, gdt, gB, gC, gA


def count_aten_ops(fn: Callable[[], object]) -> int:
    """The aten operations ``fn()`` runs (nested calls and views included), counted by torch.profiler on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))
