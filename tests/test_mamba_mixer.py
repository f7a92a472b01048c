"""Bidirectional Mamba mixer: parameter names/shapes/init of the released models, v2 math vs mambapy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lavila.models.mamba import BiMambaMixer
from lavila.models.ssm import cpu_kernel_available, selective_scan_reference

NO_DECAY = {"A_log", "A_b_log", "D", "D_b"}


def test_timemamba_shapes_match_released_checkpoint(checkpoint_keys_spec):
    spec = checkpoint_keys_spec["CLIP_TimeMamba_like_timesformer_f4"]["state_dict"]
    prefix = "module.visual.blocks.0.time_mamba."
    expected = {k[len(prefix):]: v for k, v in spec.items() if k.startswith(prefix)}
    mixer = BiMambaMixer(768, d_conv=4, expand=1)
    got = {k: list(v.shape) for k, v in mixer.state_dict().items()}
    assert got == expected


def test_vivim_tiny_shapes_match_released_checkpoint(checkpoint_keys_spec):
    spec = checkpoint_keys_spec["CLIP_ViViM_tiny_f16"]["state_dict"]
    prefix = "module.visual.layers.3.mixer."
    expected = {k[len(prefix):]: v for k, v in spec.items() if k.startswith(prefix)}
    mixer = BiMambaMixer(192, expand=2, if_divide_out=True, layer_idx=3)
    assert {k: list(v.shape) for k, v in mixer.state_dict().items()} == expected


def test_parameter_names_and_shapes_without_spec():
    m = BiMambaMixer(768, expand=1)
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert shapes == {
        "A_log": (768, 16), "D": (768,), "A_b_log": (768, 16), "D_b": (768,),
        "in_proj.weight": (1536, 768), "conv1d.weight": (768, 1, 4), "conv1d.bias": (768,),
        "x_proj.weight": (80, 768), "dt_proj.weight": (768, 48), "dt_proj.bias": (768,),
        "conv1d_b.weight": (768, 1, 4), "conv1d_b.bias": (768,), "x_proj_b.weight": (80, 768),
        "dt_proj_b.weight": (768, 48), "dt_proj_b.bias": (768,), "out_proj.weight": (768, 768),
    }


def test_init_follows_the_fork():
    torch.manual_seed(0)
    m = BiMambaMixer(64, d_state=8, expand=2, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4)
    expected_A = torch.log(torch.arange(1, 9, dtype=torch.float32)).repeat(128, 1)
    torch.testing.assert_close(m.A_log.data, expected_A)
    torch.testing.assert_close(m.A_b_log.data, expected_A)
    assert torch.equal(m.D.data, torch.ones(128)) and torch.equal(m.D_b.data, torch.ones(128))
    for name, p in m.named_parameters():
        assert getattr(p, "_no_weight_decay", False) == (name in NO_DECAY), name
    # dt_proj: U(+-rank^-0.5) weight, bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]
    rank = m.dt_rank
    assert rank == math.ceil(64 / 16)
    assert m.dt_proj.weight.abs().max() <= rank ** -0.5
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert getattr(m.dt_proj.bias, "_no_reinit", False)
    # dt_proj_b keeps PyTorch's default Linear init (bias ~ U(+-rank^-0.5)), as the released fork
    assert not getattr(m.dt_proj_b.bias, "_no_reinit", False)
    assert m.dt_proj_b.bias.abs().max() <= rank ** -0.5
    assert F.softplus(m.dt_proj_b.bias.detach()).min() > 0.1  # not the special dt init
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None


def _mambapy_branch(mixer: BiMambaMixer, backward: bool):
    from mambapy.mamba import MambaBlock, MambaConfig

    cfg = MambaConfig(d_model=mixer.d_model, n_layers=1, d_state=mixer.d_state, expand_factor=mixer.expand,
                      d_conv=mixer.d_conv, dt_rank=mixer.dt_rank)
    block = MambaBlock(cfg).double()
    sfx = "_b" if backward else ""
    sd = {
        "in_proj.weight": mixer.in_proj.weight, "out_proj.weight": mixer.out_proj.weight,
        "conv1d.weight": getattr(mixer, "conv1d" + sfx).weight, "conv1d.bias": getattr(mixer, "conv1d" + sfx).bias,
        "x_proj.weight": getattr(mixer, "x_proj" + sfx).weight,
        "dt_proj.weight": getattr(mixer, "dt_proj" + sfx).weight, "dt_proj.bias": getattr(mixer, "dt_proj" + sfx).bias,
        "A_log": mixer.A_b_log if backward else mixer.A_log, "D": mixer.D_b if backward else mixer.D,
    }
    block.load_state_dict(sd)
    return block


@pytest.mark.parametrize("expand,divide", [(1, False), (2, True)])
@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=pytest.mark.skipif(
    not cpu_kernel_available(), reason="no C compiler"))])
def test_matches_mambapy_forward_plus_reversed_backward(expand, divide, backend):
    """v2 = out_proj(y_f + flip(y_b(flip x))) [/2]; mambapy's MambaBlock is one direction incl. out_proj."""
    pytest.importorskip("mambapy")
    torch.manual_seed(1)
    mixer = BiMambaMixer(32, d_state=8, expand=expand, if_divide_out=divide, scan_backend=backend).double()
    fwd, bwd = _mambapy_branch(mixer, False), _mambapy_branch(mixer, True)
    x = torch.randn(3, 13, 32, dtype=torch.float64)
    expected = fwd(x) + bwd(x.flip(1)).flip(1)
    if divide:
        expected = expected / 2
    torch.testing.assert_close(mixer(x), expected, atol=1e-10, rtol=0)


def _v2_by_hand(m: BiMambaMixer, h: torch.Tensor) -> torch.Tensor:
    """The fork's v2 math written out with the step-by-step scan (independent of the mixer's code path)."""
    length = h.shape[1]
    xz = h @ m.in_proj.weight.t()

    def branch(xz, conv, x_proj, dt_proj, A_log, D):
        x, z = xz.chunk(2, dim=-1)
        x = F.silu(conv(x.transpose(1, 2))[..., :length])  # symmetric padding d_conv-1, keep the first L
        dbc = x.transpose(1, 2) @ x_proj.weight.t()
        dt, B, C = dbc.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
        return selective_scan_reference(x, delta, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D,
                                        z=z.transpose(1, 2), delta_bias=dt_proj.bias, delta_softplus=True)

    y_f = branch(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    y_b = branch(xz.flip(1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b).flip(-1)
    y = (y_f + y_b) / (2 if m.if_divide_out else 1)
    return y.transpose(1, 2) @ m.out_proj.weight.t()


@pytest.mark.parametrize("divide", [False, True])
def test_matches_handwritten_v2_values_and_grads(divide):
    torch.manual_seed(2)
    m = BiMambaMixer(24, d_state=4, expand=2, if_divide_out=divide).double()
    with torch.no_grad():  # make the backward branch differ from a mirror of the forward one
        m.A_b_log.add_(0.3)
        m.D_b.mul_(-0.5)
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref = _v2_by_hand(m, x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    gout = torch.randn_like(y)
    params = [x] + list(m.parameters())
    grads = torch.autograd.grad(y, params, gout)
    grads_ref = torch.autograd.grad(y_ref, params, gout)
    for (name, _), g, gr in zip([("input", x)] + list(m.named_parameters()), grads, grads_ref):
        torch.testing.assert_close(g, gr, atol=1e-9, rtol=0, msg=lambda msg, name=name: f"{name}: {msg}")


def test_both_directions_matter_and_output_is_bidirectional():
    torch.manual_seed(3)
    m = BiMambaMixer(16, d_state=4, expand=1)
    x = torch.randn(1, 10, 16)
    y = m(x)
    x2 = x.clone()
    x2[:, -1] += 1.0  # perturb the last step: the backward scan carries it to the first position
    assert not torch.allclose(m(x2)[:, 0], y[:, 0])
    x3 = x.clone()
    x3[:, 0] += 1.0  # and the first step reaches the last position through the forward scan
    assert not torch.allclose(m(x3)[:, -1], y[:, -1])


def test_divide_out_halves_the_sum():
    torch.manual_seed(4)
    summed = BiMambaMixer(16, d_state=4, expand=2, if_divide_out=False)
    averaged = BiMambaMixer(16, d_state=4, expand=2, if_divide_out=True)
    averaged.load_state_dict(summed.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(averaged(x), summed(x) / 2)


def test_backward_reaches_every_parameter_and_bf16_autocast_is_finite():
    torch.manual_seed(5)
    m = BiMambaMixer(32, d_state=8, expand=2, if_divide_out=True)
    x = torch.randn(2, 20, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_input_and_config_are_rejected():
    with pytest.raises(ValueError, match="v2"):
        BiMambaMixer(16, bimamba_type="v1")
    m = BiMambaMixer(16, d_state=4)
    with pytest.raises(ValueError, match=r"\(batch, length, 16\)"):
        m(torch.randn(2, 5, 8))
