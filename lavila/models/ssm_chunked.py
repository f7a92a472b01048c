"""Chunked pure-PyTorch selective scan for accelerators: a number of tensor operations that does not grow with L.

The step loop of :mod:`lavila.models.ssm` advances one time step per operation, so on a GPU a ViViM-T scan
(L = 3,152) issues tens of thousands of kernel launches per call. Here the sequence is cut into chunks of
K = :data:`CHUNK` steps (K = L when shorter; the last chunk zero-padded) and all chunks advance together:

1. each chunk's own end state (from a zero start) in one batched reduction:
   ``sum_t exp(A * (dt[t+1] + .. + dt[K-1])) * dt[t] u[t] B[t]``;
2. the state entering chunk c: ``sum_{c' < c} exp(A * seg[c-1, c']) * own[c']``, where ``seg[m, c']`` sums the
   chunks' total dt over chunks c'+1..m. Segment sums are a masked cumsum, so every entry adds only its own terms
   (no difference of long running sums) and, with dt >= 0 and A < 0, every exponent is <= 0: nothing overflows;
3. the entering state is put on each chunk's first step and K - 1 in-place steps ``h[t] += dA[t] * h[t-1]`` run
   over all chunks at once.

The backward recomputes a block's states from the inputs (nothing else is saved) and carries the adjoint the
same way backwards (each chunk's adjoint at its first step from a zero carry, the segment-sum carry, one reverse
loop). At most three state-sized tensors (K x nc x rows x channels x n) are alive at a time, as in the step loop.
Blocks (ranges of batch rows and channels) keep those tensors, and the (nc x nc x ...) chunk-pair decays, within
``block`` elements, the budget the step loop's accelerator blocks had.

The bound (:func:`op_bound`): the aten operations of one fwd+bwd call, views included, as torch.profiler counts
them on CPU, are at most ``OPS_PER_BLOCK_STEP * K + OPS_PER_BLOCK`` per block plus ``OPS_PER_CALL``, whatever L:
with K = 64, 2,010 for a call that fits one block (ViViM-T at 16 frames, batch 2). A call is split into several
blocks only when its states exceed the budget, and then each block's operations are budget-sized.

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
# recomputation and the adjoint loop) and ~735 others; ~140 per call (measured: 1,693 per block and 137 per call at
# K = 64 with a padded tail). With K = 64: at most 2,010 for a call of one block (1,830 measured).
OPS_PER_BLOCK_STEP = 15
OPS_PER_BLOCK = 900
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
    # No torch.cat (on CPU it splits large inputs into one narrow per piece) and no zeros of L-dependent size (a CPU
    # zero_ adds a fill_ from 32k elements): profiler counts on CPU that would follow L, not the GPU's launches.
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


def _sums_after(dt: Tensor) -> Tensor:
    """dt[t+1] + .. + dt[k-1] for each step t of each chunk (0 at the last step); dt: (k, nc, r, d)."""
    out = torch.empty_like(dt)  # not zeros_like: see _to_chunks
    out[:-1] = dt[1:].flip(0).cumsum(0).flip(0)
    out[-1] = 0
    return out


def _sums_before(dt: Tensor) -> Tensor:
    """dt[1] + .. + dt[t] for each step t of each chunk (0 at the first step)."""
    out = torch.empty_like(dt)
    out[1:] = dt[1:].cumsum(0)
    out[0] = 0
    return out


def _carry(own: Tensor, total: Tensor, A: Tensor, forward: bool) -> Tensor:
    """What each chunk receives from the others: forward, the state entering chunk c from the chunks' own end states
    (zero start); backward, the adjoint reaching the last step of chunk c from what the later chunks pass back."""
    decays = _chunk_pair_decays(total, A)
    if forward:
        ends = decays.mul_(own[None]).sum(1)  # full end state of each chunk
        out = torch.empty_like(ends)
        out[1:] = ends[:-1]
        out[0] = 0
        return out
    sent = torch.empty_like(own)
    sent[:-1] = own[1:]
    sent[-1] = 0
    return decays.mul_(sent[:, None]).sum(0)


def _block_states(dt: Tensor, dtu: Tensor, Bc: Tensor, A: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """dA, the states h (k, nc, r, d, n) and the state entering each chunk (nc, r, d, n; None for one chunk);
    dt, dtu: (k, nc, r, d), Bc: (k, nc, r, n), A: (d, n). At most two state-sized tensors at a time."""
    k, nc = dt.shape[:2]
    dA = (dt[..., None] * A).exp_()
    h_in = None
    if nc > 1:
        # each chunk's end state from a zero start: sum over t of exp(A * (dt[t+1] + .. + dt[k-1])) dtu[t] B[t]
        own = (_sums_after(dt)[..., None] * A).exp_().mul_(dtu[..., None]).mul_(Bc[:, :, :, None, :]).sum(0)
        h_in = _carry(own, dt.sum(0), A, forward=True)
    h = dtu[..., None] * Bc[:, :, :, None, :]
    if h_in is not None:
        h[0].addcmul_(dA[0], h_in)
    hs, dAs = h.unbind(0), dA.unbind(0)  # one op for all the views of the loop
    for t in range(1, k):
        hs[t].addcmul_(dAs[t], hs[t - 1])
    return dA, h, h_in


def _blocks(batch: int, d: int, rows: int, channels: int):
    for b0 in range(0, batch, rows):
        for d0 in range(0, d, channels):
            yield slice(b0, min(batch, b0 + rows)), slice(d0, min(d, d0 + channels))


def _accumulate(out: Tensor, value: Tensor, length: int, first: bool) -> None:
    """out (l, ...) = or += value (k, nc, ...): the channel blocks of one batch range sum their gradients of B, C."""
    if first:
        out.copy_(_from_chunks(value, length))
    else:
        out.add_(_from_chunks(value, length))


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
    gB, gC, gA = torch.empty_like(Bt), torch.empty_like(Ct), torch.zeros_like(A)
    for bs, ds in _blocks(batch, d, rows, channels):
        dtc, dtuc, gyc = (_to_chunks(t[:, bs, ds], k) for t in (dt, dtu, gy))
        Bc, Cc = _to_chunks(Bt[:, bs], k), _to_chunks(Ct[:, bs], k)
        Ab = A[ds]
        dA, h, h_in = _block_states(dtc, dtuc, Bc, Ab)
        _accumulate(gC[:, bs], torch.matmul(h.transpose(-1, -2), gyc[..., None])[..., 0], length, ds.start == 0)
        # adjoint state g[t] = C[t] gy[t] + dA[t+1] g[t+1], carried between chunks like the states
        g_in = None
        if h_in is not None:
            # each chunk's adjoint at its first step from a zero carry, times dA there: what it passes back
            own = (_sums_before(dtc)[..., None] * Ab).exp_().mul_(Cc[:, :, :, None, :]).mul_(gyc[..., None]).sum(0)
            g_in = _carry(own.mul_(dA[0]), dtc.sum(0), Ab, forward=False)
        g = gyc[..., None] * Cc[:, :, :, None, :]
        if g_in is not None:
            g[-1].add_(g_in)
        gs, dAs = g.unbind(0), dA.unbind(0)
        for t in range(k - 2, -1, -1):
            gs[t].addcmul_(dAs[t + 1], gs[t + 1])
        del gs, dAs  # views: they would keep the storage alive
        gdBu = torch.matmul(g, Bc[..., None])[..., 0]  # sum over n of g * B
        _accumulate(gB[:, bs], torch.matmul(g.transpose(-1, -2), dtuc[..., None])[..., 0], length, ds.start == 0)
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
