import math

import pytest
import torch
from torch import nn

from precipdiff.diffusion import EDMPrecond, add_condition_noise, edm_loss, member_generators
from precipdiff.errors import ConfigError
from precipdiff.nn import UNet, UNetConfig


class _Probe(nn.Module):
    """Records its input and returns a constant, to check the preconditioning."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x, labels):
        self.seen = (x, labels)
        return torch.full_like(x[:, :1], self.value)


def test_preconditioning_matches_karras_table1():
    sd, sigma = 0.5, 2.0
    probe = _Probe(3.0)
    pre = EDMPrecond(probe, sigma_data=sd)
    x = torch.full((1, 1, 2, 3), 4.0)
    cond = torch.full((1, 2, 2, 3), 7.0)
    d = pre(x, torch.tensor(sigma), cond)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    c_in = 1 / math.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(d, torch.full_like(x, c_skip * 4.0 + c_out * 3.0))
    net_in, labels = probe.seen
    torch.testing.assert_close(net_in[:, 0], torch.full((1, 2, 3), c_in * 4.0))
    torch.testing.assert_close(net_in[:, 1:], cond)
    torch.testing.assert_close(labels, torch.tensor([math.log(sigma) / 4]))


def test_condition_noise_per_member_stream():
    cond = torch.zeros(3, 1, 4, 5)
    gens = member_generators(7, [0, 0, 0], [0, 1, 2], "cpu")
    a = add_condition_noise(cond, 0.5, gens)
    alone = add_condition_noise(cond[:1], 0.5, member_generators(7, [0], [2], "cpu"))
    torch.testing.assert_close(a[2:3], alone, rtol=0, atol=0)
    # Exactly sigma_c times each member's own standard-normal stream, nothing else.
    fresh = member_generators(7, [0, 0, 0], [0, 1, 2], "cpu")
    expect = torch.stack([0.5 * torch.randn((1, 4, 5), generator=g) for g in fresh])
    torch.testing.assert_close(a, expect, rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    assert add_condition_noise(cond, 0.0, gens) is cond
    with pytest.raises(ConfigError):
        add_condition_noise(cond, -1.0, gens)
    with pytest.raises(ConfigError, match="generators"):
        add_condition_noise(cond, 1.0, gens[:2])


def test_edm_loss_trains_tiny_denoiser():
    torch.manual_seed(0)
    net = UNet(
        UNetConfig(
            in_channels=2, base_channels=8, channel_mult=(1, 2), num_blocks=1, noise_channels=16
        )
    )
    pre = EDMPrecond(net, sigma_data=1.0)
    # Target = condition (identity task): the loss must drop with training.
    x0 = torch.randn(8, 1, 8, 8)
    cond = x0 + 0.1 * torch.randn_like(x0)
    opt = torch.optim.Adam(pre.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = edm_loss(pre, x0, cond, generator=torch.Generator().manual_seed(1)).item()
    for _ in range(60):
        loss = edm_loss(pre, x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = edm_loss(pre, x0, cond, generator=torch.Generator().manual_seed(1)).item()
    assert math.isfinite(first) and last < 0.7 * first


def test_sigma_data_validated():
    with pytest.raises(ConfigError, match="sigma_data"):
        EDMPrecond(nn.Identity(), sigma_data=0.0)
