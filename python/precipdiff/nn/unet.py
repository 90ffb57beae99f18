"""A UNet for any grid size, seamless across 0°/360° on periodic grids.

One architecture serves both stages of the method (Aich et al. 2025):

* the regression UNet maps predictors (+ static fields) on the coarse grid to
  coarse precipitation (``noise_channels = 0``: no noise-level input);
* the diffusion denoiser maps noisy fine precipitation + the noised condition
  (+ static fine fields) and a noise-level embedding to the denoised field
  (wrapped by :class:`precipdiff.diffusion.edm.EDMPrecond`).

Any ``H × W`` works: the input is padded internally to a multiple of
``2 ** (levels - 1)`` and the output cropped back. On a periodic grid every
convolution pads circularly in longitude (zeros in latitude) and the internal
padding wraps around, so the network has no seam at the dateline: rolling a
global field by a multiple of ``2 ** (levels - 1)`` columns rolls the output
identically.

Two formulations of the same padding
------------------------------------
With autograd on (training) each convolution pads its input explicitly
(``F.pad`` circular in longitude, then zeros in latitude: two materialised
copies and a zero fill per convolution). Without autograd (inference, export)
the operation in front of each convolution (SiLU, or the nearest-neighbour
upsampling) writes its result straight into a buffer that is two columns
wider, the two halo columns are copied from the opposite edge, and the
convolution zero-pads latitude itself (``padding=(1, 0)``); on a regional grid
the convolution pads both directions itself. No padded copy of an activation
is ever made. The two formulations agree to float32 rounding: SiLU written
into a row-strided buffer takes the scalar path for the last ``W mod 16``
elements of each row, which may differ from the vectorised path in the last bit
(``tests/python/test_unet.py`` checks the tolerance; the convolutions
themselves are unchanged).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from precipdiff.errors import ConfigError, reject_unknown_keys


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet` (stored in the bundle manifest).

    Parameters
    ----------
    in_channels
        Input channels (predictors + static fields, or noisy field + condition
        + static fields for the denoiser).
    out_channels
        Output channels (1: precipitation).
    base_channels
        Channels at full resolution.
    channel_mult
        Channel multiplier per resolution level; its length is the number of
        levels (each level below the first halves the resolution).
    num_blocks
        Residual blocks per level in the encoder (the decoder has the same).
    attention_levels
        Level indices (0 = full resolution) with self-attention after each
        block; attention costs memory quadratic in the number of grid points
        at that level, so keep it to the lowest levels.
    attention_heads
        Heads of each self-attention layer.
    periodic_lon
        Pad circularly in longitude (global grids).
    noise_channels
        Size of the sinusoidal noise-level embedding; 0 means the network takes
        no noise level (the regression).
    dropout
        Dropout probability inside residual blocks (training only).
    """

    in_channels: int
    out_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_blocks: int = 2
    attention_levels: tuple[int, ...] = ()
    attention_heads: int = 1
    periodic_lon: bool = False
    noise_channels: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        positive = ("in_channels", "out_channels", "base_channels", "num_blocks", "attention_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(
                f"UNetConfig.channel_mult must be a non-empty list of positive integers, "
                f"got {list(self.channel_mult)}"
            )
        bad = [a for a in self.attention_levels if not 0 <= a < len(self.channel_mult)]
        if bad:
            raise ConfigError(
                f"UNetConfig.attention_levels {bad} out of range: the network has "
                f"{len(self.channel_mult)} levels (0..{len(self.channel_mult) - 1})"
            )
        if self.noise_channels < 0 or self.noise_channels % 2:
            raise ConfigError(
                f"UNetConfig.noise_channels must be 0 or a positive even number, "
                f"got {self.noise_channels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        for level, mult in enumerate(self.channel_mult):
            ch = self.base_channels * mult
            if level in self.attention_levels and ch % self.attention_heads:
                raise ConfigError(
                    f"UNetConfig: {ch} channels at level {level} are not divisible by "
                    f"attention_heads={self.attention_heads}"
                )

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self.channel_mult)

    @property
    def pad_multiple(self) -> int:
        """Grid sizes are padded internally to a multiple of this."""
        return int(2 ** (self.levels - 1))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists).

        Returns
        -------
        dict
            The configuration.
        """
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from a dict, rejecting unknown keys.

        Parameters
        ----------
        data
            As produced by :meth:`to_dict`.

        Returns
        -------
        UNetConfig
            The configuration.
        """
        reject_unknown_keys(cls, data, "UNetConfig")
        missing = sorted(k for k in ("in_channels",) if k not in data)
        if missing:
            raise ConfigError(f"UNetConfig is missing required key(s) {missing}")
        d = dict(data)
        for key in ("channel_mult", "attention_levels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def build(self) -> UNet:
        """Build the network described by this configuration.

        Returns
        -------
        UNet
            A freshly initialised network.
        """
        return UNet(self)


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32, at least 4 channels per group when possible."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


class GridConv2d(nn.Conv2d):
    """3×3 (or k×k) convolution padding circularly in longitude when periodic.

    Latitude is zero-padded. Equivalent to ``nn.Conv2d(padding=k//2)`` on a
    non-periodic grid.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, periodic: bool) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=0)
        self.periodic = periodic
        self.halo = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the grid-aware padding (explicit padded copies)."""
        h = self.halo
        if h:
            if self.periodic:
                x = F.pad(x, (h, h, 0, 0), mode="circular")
                x = F.pad(x, (0, 0, h, h))
            else:
                x = F.pad(x, (h, h, h, h))
        return super().forward(x)

    def _conv_haloed(self, buf: torch.Tensor) -> torch.Tensor:
        """Convolve ``buf``, which already holds the longitude halo when periodic."""
        h = self.halo
        pad = (h, 0) if self.periodic else (h, h)
        return F.conv2d(buf, self.weight, self.bias, padding=pad)

    def _halo_buffer(self, like: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Return an uninitialised ``(B, C, height, width + 2*halo)`` buffer (periodic input)."""
        fmt = (
            torch.channels_last
            if like.dim() == 4
            and not like.is_contiguous()
            and like.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        shape = (like.shape[0], like.shape[1], height, width + 2 * self.halo)
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)

    def _fill_halo(self, buf: torch.Tensor) -> torch.Tensor:
        """Copy the columns across the periodic seam into the halo of ``buf``."""
        h = self.halo
        w = buf.shape[-1] - 2 * h
        buf[..., :h] = buf[..., w : w + h]
        buf[..., w + h :] = buf[..., h : 2 * h]
        return buf

    def silu_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``self(silu(x))``.

        Without autograd, SiLU writes into the padded buffer the convolution
        reads (no padded copy, no zero fill; see the module docstring).

        Parameters
        ----------
        x
            ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            The convolution's output, ``(B, out, H, W)``.
        """
        if torch.is_grad_enabled() or not self.halo:
            return self(F.silu(x))
        if not self.periodic:
            return self._conv_haloed(F.silu(x))
        h, w = x.shape[-2:]
        buf = self._halo_buffer(x, h, w)
        torch.ops.aten.silu.out(x, out=buf[..., self.halo : self.halo + w])
        return self._conv_haloed(self._fill_halo(buf))

    def upsample_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``self(nearest 2× upsampling of x)``.

        Without autograd the upsampled field is written straight into the
        padded buffer (a pure copy: identical to ``F.interpolate``).

        Parameters
        ----------
        x
            ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, out, 2H, 2W)``.
        """
        if torch.is_grad_enabled() or not self.halo:
            return self(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        if not self.periodic:
            return self._conv_haloed(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        b, c, h, w = x.shape
        buf = self._halo_buffer(x, 2 * h, 2 * w)
        inner = buf[..., self.halo : self.halo + 2 * w].unflatten(-1, (w, 2)).unflatten(2, (h, 2))
        inner.copy_(x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2))
        return self._conv_haloed(self._fill_halo(buf))

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``self(x)``, without a padded copy when autograd is off.

        Parameters
        ----------
        x
            ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, out, H, W)``.
        """
        if torch.is_grad_enabled() or not self.halo:
            return self(x)
        if not self.periodic:
            return self._conv_haloed(x)
        h = self.halo
        return self._conv_haloed(F.pad(x, (h, h, 0, 0), mode="circular"))


class ResBlock(nn.Module):
    """Pre-activation residual block with optional noise-embedding scale/shift."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_ch: int, *, periodic: bool, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = GridConv2d(in_ch, out_ch, periodic=periodic)
        self.emb = nn.Linear(emb_ch, 2 * out_ch) if emb_ch else None
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = GridConv2d(out_ch, out_ch, periodic=periodic)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """Apply the block."""
        h = self.conv1.silu_conv(self.norm1(x))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        if self.training and self.dropout.p > 0:
            h = self.conv2(self.dropout(F.silu(h)))
        else:
            h = self.conv2.silu_conv(h)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all grid points of a level."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention with a residual connection."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (b, heads, hw, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the noise label followed by a two-layer MLP."""

    def __init__(self, channels: int, out_ch: int) -> None:
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(
            nn.Linear(channels, out_ch), nn.SiLU(), nn.Linear(out_ch, out_ch), nn.SiLU()
        )

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embed labels of shape ``(batch,)``."""
        half = self.channels // 2
        freqs = torch.exp(
            -math.log(10000.0)
            * torch.arange(half, device=labels.device, dtype=torch.float32)
            / half
        )
        args = labels.to(torch.float32)[:, None] * freqs[None, :]
        # The sinusoids are always float32; the MLP runs in its weights' dtype
        # (a bf16/fp16 inference copy, precipdiff.perf.precision).
        first = cast(nn.Linear, self.mlp[0])
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(first.weight.dtype))


class UNet(nn.Module):
    """UNet with grid-aware padding, optional attention and noise embedding.

    Parameters
    ----------
    config
        The architecture.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        periodic = cfg.periodic_lon
        emb_ch = 4 * cfg.base_channels if cfg.noise_channels else 0
        self.embed = NoiseEmbedding(cfg.noise_channels, emb_ch) if cfg.noise_channels else None
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        self.stem = GridConv2d(cfg.in_channels, chans[0], periodic=periodic)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_ch, periodic=periodic, dropout=cfg.dropout)

        self.enc = nn.ModuleList()
        self.enc_attn = nn.ModuleList()
        ch = chans[0]
        for level, out in enumerate(chans):
            blocks = nn.ModuleList()
            attns = nn.ModuleList()
            for _ in range(cfg.num_blocks):
                blocks.append(block(ch, out))
                attns.append(
                    SelfAttention(out, cfg.attention_heads)
                    if level in cfg.attention_levels
                    else nn.Identity()
                )
                ch = out
            self.enc.append(blocks)
            self.enc_attn.append(attns)
        self.mid1 = block(ch, ch)
        low = cfg.levels - 1
        self.mid_attn = (
            SelfAttention(ch, cfg.attention_heads) if low in cfg.attention_levels else nn.Identity()
        )
        self.mid2 = block(ch, ch)
        self.dec = nn.ModuleList()
        self.dec_attn = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            out = chans[level]
            blocks = nn.ModuleList()
            attns = nn.ModuleList()
            for j in range(cfg.num_blocks):
                blocks.append(block(ch + out if j == 0 else out, out))
                attns.append(
                    SelfAttention(out, cfg.attention_heads)
                    if level in cfg.attention_levels
                    else nn.Identity()
                )
                ch = out
            self.dec.append(blocks)
            self.dec_attn.append(attns)
            if level > 0:
                self.up_convs.append(GridConv2d(ch, ch, periodic=periodic))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out_conv = GridConv2d(ch, cfg.out_channels, periodic=periodic)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Pad H and W to a multiple of the down-sampling factor."""
        m = self.config.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if pw:
            if self.config.periodic_lon and pw <= w:
                x = F.pad(x, (0, pw, 0, 0), mode="circular")  # wrap: continue across 360°
            else:
                x = F.pad(x, (0, pw, 0, 0), mode="replicate")
        if ph:
            x = F.pad(x, (0, 0, 0, ph), mode="replicate")
        return x, h, w

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network.

        Parameters
        ----------
        x
            Input ``(batch, in_channels, H, W)``; any H and W.
        noise_labels
            ``(batch,)`` noise labels (EDM's ``c_noise``); required when
            ``noise_channels > 0``, ignored otherwise.

        Returns
        -------
        torch.Tensor
            ``(batch, out_channels, H, W)``.
        """
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ConfigError(
                f"UNet expects input (batch, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        emb = None
        if self.embed is not None:
            if noise_labels is None:
                raise ConfigError("this UNet has noise_channels > 0 and needs noise_labels")
            emb = self.embed(noise_labels.reshape(-1).expand(x.shape[0]))
        x, h0, w0 = self._pad(x)
        h = self.stem.plain(x)
        skips: list[torch.Tensor] = []
        for level in range(cfg.levels):
            blocks = cast(nn.ModuleList, self.enc[level])
            attns = cast(nn.ModuleList, self.enc_attn[level])
            for blk, attn in zip(blocks, attns, strict=True):
                h = attn(blk(h, emb))
            skips.append(h)
            if level < cfg.levels - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        up = iter(self.up_convs)
        for i in range(cfg.levels):
            blocks = cast(nn.ModuleList, self.dec[i])
            attns = cast(nn.ModuleList, self.dec_attn[i])
            level = cfg.levels - 1 - i
            if level < cfg.levels - 1:
                h = cast(GridConv2d, next(up)).upsample_conv(h)
            h = torch.cat([h, skips.pop()], dim=1)
            for blk, attn in zip(blocks, attns, strict=True):
                h = attn(blk(h, emb))
        out = self.out_conv.silu_conv(self.out_norm(h))
        return out[..., :h0, :w0]
