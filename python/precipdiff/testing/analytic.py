"""Analytic diffusion targets with exact denoisers, to check samplers against known answers.

For data ``x0`` drawn per pixel from a Gaussian mixture ``sum_j w_j N(mu_j, s_j^2)``
and ``x = x0 + sigma * n``, the exact denoiser ``E[x0 | x]`` is known in closed
form: the posterior responsibilities ``r_j ∝ w_j N(x; mu_j, s_j^2 + sigma^2)``
weight the per-component posterior means ``mu_j + (x - mu_j) s_j^2 / (s_j^2 +
sigma^2)``. A sampler driven by this denoiser must reproduce the mixture's mean
and standard deviation; any difference is the sampler's own error (Karras et
al. 2022 call this the "sampling error", separate from the network's).

:class:`GaussianRandomField` does the same per Fourier mode: a stationary Gaussian
field whose exact denoiser is a Wiener filter, so that a sampler's error can be read
per wavelength band (its effect on small-scale spectra).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: ``denoise_fn(x, sigma, cond) -> E[x0 | x]``.
DenoiserFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``sample_fn(denoise_fn, cond) -> samples`` (a sampler with its settings and generators bound).
SampleFn = Callable[[DenoiserFn, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GaussianMixture:
    """A one-dimensional Gaussian mixture target, independent per pixel.

    Parameters
    ----------
    weights
        Component weights (positive, normalised internally).
    means
        Component means.
    stds
        Component standard deviations (positive).
    """

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    @classmethod
    def gaussian(cls, mean: float, std: float) -> GaussianMixture:
        """Return a single Gaussian ``N(mean, std^2)``.

        Parameters
        ----------
        mean, std
            Its parameters.

        Returns
        -------
        GaussianMixture
            The target.
        """
        return cls((1.0,), (float(mean),), (float(std),))

    @property
    def mean(self) -> float:
        """Mean of the mixture."""
        w = self._w()
        return float(sum(wi * m for wi, m in zip(w, self.means, strict=True)))

    @property
    def kurtosis(self) -> float:
        """Kurtosis ``E[(x - mean)^4] / std^4`` (3 for a Gaussian)."""
        w = self._w()
        m = self.mean
        m4 = sum(
            wi * ((mu - m) ** 4 + 6 * (mu - m) ** 2 * s * s + 3 * s**4)
            for wi, mu, s in zip(w, self.means, self.stds, strict=True)
        )
        return float(m4 / self.std**4)

    @property
    def std(self) -> float:
        """Standard deviation of the mixture."""
        w = self._w()
        m2 = sum(wi * (s * s + m * m) for wi, m, s in zip(w, self.means, self.stds, strict=True))
        return math.sqrt(max(m2 - self.mean**2, 0.0))

    def _w(self) -> list[float]:
        tot = float(sum(self.weights))
        return [float(w) / tot for w in self.weights]

    def denoiser(self) -> DenoiserFn:
        """Return the exact denoiser ``D(x; sigma, cond) = E[x0 | x]`` (ignores ``cond``).

        Returns
        -------
        callable
            ``fn(x, sigma, cond) -> tensor`` like ``x``, computed in float64.
        """
        w = torch.tensor(self._w(), dtype=torch.float64)
        mu = torch.tensor(self.means, dtype=torch.float64)
        sd = torch.tensor(self.stds, dtype=torch.float64)

        def fn(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            s2 = float(sigma) ** 2
            xx = x.double()[..., None]
            var = sd**2 + s2
            logp = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (xx - mu) ** 2 / var
            resp = torch.softmax(logp, dim=-1)
            post = mu + (xx - mu) * sd**2 / var
            return (resp * post).sum(-1).to(x.dtype)

        return fn

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` exact samples (float64), e.g. to compare quantiles.

        Parameters
        ----------
        n
            Number of samples.
        generator
            Random stream.

        Returns
        -------
        torch.Tensor
            ``(n,)`` samples.
        """
        w = torch.tensor(self._w(), dtype=torch.float64)
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        mu = torch.tensor(self.means, dtype=torch.float64)[comp]
        sd = torch.tensor(self.stds, dtype=torch.float64)[comp]
        return mu + sd * z


@dataclass(frozen=True)
class GaussianRandomField:
    """A stationary Gaussian random field on a periodic grid, with a power-law spectrum.

    Each orthonormal Fourier mode of wavenumber ``k`` (cycles per cell) is an
    independent Gaussian of standard deviation
    ``min(max_std, small_std * (k / 0.5) ** -slope)`` (the mean mode gets
    ``max_std``); the field's mean is 0. The defaults follow E-OBS winter
    precipitation over Iberia in the networks' space (normalised ``log1p``, 0.5°
    cells, training winters): per-mode standard deviations of about 0.27 at 1-1.4°
    wavelengths, 0.4 at 1.4-2°, 0.9 at 2-4° and 2.2 beyond 4°
    (``scripts/iberia_mode_amplitudes.py``). The exact denoiser is the Wiener filter
    ``S / (S + sigma^2)`` applied per mode, so a sampler driven by it must reproduce
    the spectrum ``S``: any band whose power comes out low or high is the sampler's
    own error at those scales (a per-pixel target cannot show this).

    Parameters
    ----------
    size
        ``(H, W)`` of the grid.
    small_std
        Per-mode standard deviation at the Nyquist wavenumber ``k = 0.5``
        (wavelength 2 cells).
    slope
        Power-law exponent of the per-mode standard deviation (power ~ ``k^-2 slope``).
    max_std
        Cap of the per-mode standard deviation (the large scales).
    """

    size: tuple[int, int]
    small_std: float = 0.27
    slope: float = 1.5
    max_std: float = 2.0

    def wavenumber(self) -> torch.Tensor:
        """Radial wavenumber (cycles per cell) of each FFT mode, ``(H, W)`` float64."""
        h, w = self.size
        ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        kx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
        return torch.sqrt(kx**2 + ky**2)

    def mode_variance(self) -> torch.Tensor:
        """Variance ``S`` of each orthonormal Fourier mode, ``(H, W)`` float64."""
        k = self.wavenumber()
        std = self.small_std * (torch.clamp(k, min=1e-12) / 0.5) ** (-self.slope)
        return torch.clamp(std, max=self.max_std) ** 2

    def denoiser(self) -> DenoiserFn:
        """Return the exact denoiser (the per-mode Wiener filter; ignores ``cond``).

        Returns
        -------
        callable
            ``fn(x, sigma, cond) -> tensor`` like ``x`` (``(..., H, W)``), in float64.
        """
        s = self.mode_variance()

        def fn(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            f = torch.fft.fft2(x.double(), norm="ortho")
            gain = s / (s + float(sigma) ** 2)
            return torch.fft.ifft2(f * gain, norm="ortho").real.to(x.dtype)

        return fn

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` exact fields, ``(n, 1, H, W)`` float64.

        Parameters
        ----------
        n
            Number of fields.
        generator
            Random stream.

        Returns
        -------
        torch.Tensor
            The fields.
        """
        white = torch.randn((n, 1, *self.size), generator=generator, dtype=torch.float64)
        f = torch.fft.fft2(white, norm="ortho") * torch.sqrt(self.mode_variance())
        return torch.fft.ifft2(f, norm="ortho").real

    def band_power_ratio(
        self, fields: torch.Tensor, wavelengths: tuple[float, float]
    ) -> tuple[float, float]:
        """Power of ``fields`` in a wavelength band over the target's, and its standard error.

        Parameters
        ----------
        fields
            ``(..., H, W)`` samples (e.g. a sampler's output).
        wavelengths
            ``(shortest, longest)`` wavelength in cells, e.g. ``(2, 4)``; the band
            includes the shortest and excludes the longest.

        Returns
        -------
        tuple of float
            ``(ratio, standard error of the ratio)``: the power of one complex
            Gaussian mode is exponentially distributed (relative standard deviation
            1), and each pair of conjugate modes of a real field counts once.
        """
        k = self.wavenumber()
        lo, hi = wavelengths
        band = (k > 1.0 / hi) & (k <= 1.0 / lo)
        if not bool(band.any()):
            raise ValueError(f"no Fourier mode has a wavelength in {wavelengths} cells")
        f = torch.fft.fft2(fields.double(), norm="ortho")
        p = (f.abs() ** 2).reshape(-1, *self.size)
        ratio = float((p[:, band] / self.mode_variance()[band]).mean())
        n_indep = max(int(band.sum()) // 2, 1) * p.shape[0]
        return ratio, math.sqrt(1.0 / n_indep)


#: Targets the shipped samplers are checked on (tests and bench): the Gaussian of the
#: issue report, a narrow and a wide Gaussian, and two-component mixtures (one with a
#: narrow "dry" component, as normalised log-precipitation has at zero rain).
REFERENCE_TARGETS: dict[str, GaussianMixture] = {
    "N(2, 0.5^2)": GaussianMixture.gaussian(2.0, 0.5),
    "N(0, 1)": GaussianMixture.gaussian(0.0, 1.0),
    "N(-1, 0.15^2)": GaussianMixture.gaussian(-1.0, 0.15),
    "N(0.5, 2^2)": GaussianMixture.gaussian(0.5, 2.0),
    "0.5 N(-1, 0.5^2) + 0.5 N(1, 0.5^2)": GaussianMixture((0.5, 0.5), (-1.0, 1.0), (0.5, 0.5)),
    "0.6 N(-1, 0.1^2) + 0.4 N(1.5, 0.6^2)": GaussianMixture((0.6, 0.4), (-1.0, 1.5), (0.1, 0.6)),
    "0.3 N(-1, 0.3^2) + 0.7 N(2, 0.3^2)": GaussianMixture((0.3, 0.7), (-1.0, 2.0), (0.3, 0.3)),
}


def sampler_moment_errors(
    sample_fn: SampleFn, target: GaussianMixture, shape: Sequence[int] = (8, 1, 64, 64)
) -> tuple[float, float, float]:
    """Run a sampler on a target and return its errors in units of the target's std.

    Parameters
    ----------
    sample_fn
        ``sample_fn(denoise_fn, cond) -> samples`` (e.g. a partial of
        :func:`precipdiff.diffusion.samplers.sample` with fixed generators).
    target
        The analytic target.
    shape
        Shape of the condition (and samples): batch, 1, H, W.

    Returns
    -------
    tuple of float
        ``(mean error / std, std / target std - 1, standard error of that std ratio)``;
        the standard error of a sample std of ``n`` independent draws is
        ``sqrt((kurtosis - 1) / (4 n))`` relative to the std (``1 / sqrt(2 n)`` for a
        Gaussian); the standard error of the mean error is ``1 / sqrt(n)``.
    """
    cond = torch.zeros(tuple(shape))
    x = sample_fn(target.denoiser(), cond).double()
    n = x.numel()
    m_err = (float(x.mean()) - target.mean) / target.std
    s_err = float(x.std()) / target.std - 1.0
    se = math.sqrt((target.kurtosis - 1.0) / (4.0 * n))
    return m_err, s_err, se
