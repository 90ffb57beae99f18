"""Set a process up for inference without disturbing its host.

:func:`configure` is what the embedded server runs once at start-up
(``Plugin.from_namelist``) and what ``precipdiff generate`` runs; Python users may
call it too. What it does, and what it deliberately leaves alone:

- **threads**: ``torch.set_num_threads(n)`` when ``n > 0`` (torch's own pool);
- **allocator**: a caching allocator in front of torch's CPU allocator
  (:mod:`precipdiff.perf.allocator`); the host's ``malloc`` settings are untouched;
- **denormals**: FTZ/DAZ inside each inference call only, on request
  (:func:`precipdiff.perf.fpenv.flush_denormals`); the caller's floating-point
  environment is restored on exit, and torch's worker threads are started inside
  such a scope so that they flush too (they run nothing but torch's kernels);
- **autograd**: off inside inference (``torch.inference_mode``, frozen inference
  copies of the networks), never switched off globally (the switch is thread-local).

Flushing denormals is opt-in: it changes results wherever denormals do occur,
and no speed-up from it has been shown for these networks
(``bench/bench_generate_speed.py --what forward``, variant ``flush-denormals``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from precipdiff.errors import ConfigError

__all__ = ["ALLOCATORS", "ProcessReport", "ProcessSettings", "configure"]

log = logging.getLogger(__name__)

#: ``auto``: the caching allocator when it can be built/loaded, torch's own otherwise;
#: ``caching``: require it; ``default``: torch's own allocator.
ALLOCATORS = ("auto", "caching", "default")


@dataclass(frozen=True)
class ProcessSettings:
    """What :func:`configure` applies.

    Parameters
    ----------
    threads
        torch intra-op threads; 0 leaves torch's default.
    allocator
        One of :data:`ALLOCATORS`.
    flush_denormals
        Flush denormals to zero inside inference calls (opt-in).
    """

    threads: int = 0
    allocator: str = "auto"
    flush_denormals: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be an integer >= 0, got {self.threads!r}")
        if self.allocator not in ALLOCATORS:
            raise ConfigError(
                f"allocator {self.allocator!r} is not one of {', '.join(map(repr, ALLOCATORS))}"
            )


@dataclass
class ProcessReport:
    """What :func:`configure` did.

    Parameters
    ----------
    threads
        torch intra-op threads now.
    allocator
        ``"caching"`` or ``"default"``.
    flush_denormals
        Whether inference calls flush denormals.
    notes
        Why a setting was not applied as asked (e.g. no C++ compiler).
    """

    threads: int
    allocator: str
    flush_denormals: bool
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a one-line description for logs.

        Returns
        -------
        str
            E.g. ``"torch threads 2, caching CPU allocator, denormals kept"``.
        """
        parts = [
            f"torch threads {self.threads}",
            "caching CPU allocator" if self.allocator == "caching" else "torch's default allocator",
            "denormals flushed during inference" if self.flush_denormals else "denormals kept",
        ]
        return ", ".join(parts) + "".join(f"; {n}" for n in self.notes)


def configure(settings: ProcessSettings, *, device_type: str = "cpu") -> ProcessReport:
    """Apply the inference settings to this process (idempotent).

    Parameters
    ----------
    settings
        What to apply.
    device_type
        ``"cpu"`` or ``"cuda"``: the caching CPU allocator only matters when the
        networks run on the CPU (with ``auto`` it is skipped on CUDA).

    Returns
    -------
    ProcessReport
        What was applied.

    Raises
    ------
    ConfigError
        With ``allocator="caching"`` when the allocator cannot be built or loaded.
    """
    import torch

    from precipdiff.perf import allocator as alloc

    notes: list[str] = []
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    used = "default"
    want = settings.allocator
    if want == "caching" or (want == "auto" and device_type == "cpu"):
        try:
            alloc.install()
            used = "caching"
        except ConfigError as exc:
            if want == "caching":
                raise ConfigError(f"torch_allocator = 'caching': {exc}") from exc
            notes.append(f"caching CPU allocator unavailable ({str(exc).splitlines()[0]})")
            log.warning("precipdiff: %s; using torch's default allocator", notes[-1])
    elif alloc.installed():
        used = "caching"
    if settings.flush_denormals:
        from precipdiff.perf.fpenv import flush_denormals

        # Worker threads inherit the environment of the thread that starts them: start
        # torch's intra-op pool inside the scope (a no-op when it already exists).
        with flush_denormals(), torch.inference_mode():
            torch.ones(1 << 20).mul_(2.0)
            probe = torch.full((1 << 20,), 1.0e-39).mul_(0.5)
            if int((probe != 0).sum()):
                notes.append("torch's worker threads existed before: they keep denormals")
    return ProcessReport(
        threads=torch.get_num_threads(),
        allocator=used,
        flush_denormals=settings.flush_denormals,
        notes=notes,
    )
