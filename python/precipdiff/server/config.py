"""The ``&precipdiff_nml`` namelist: configuration of the embedded server.

The namelist is read with :mod:`f90nml` from the file the ESM names in its
``precipdiff_init`` call; it may be the ESM's own ``input.nml`` (other groups are
ignored). Swapping the checkpoint is editing ``bundle_path``, no rebuild.
Every key is documented in ``docs/namelist.md``; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precipdiff.errors import ConfigError
from precipdiff.perf.process import ALLOCATORS
from precipdiff.server.vertical import BELOW_GROUND_POLICIES

NAMELIST_GROUP = "precipdiff_nml"

RETURN_MODES = ("member", "mean", "cycle")
QDM_MODES = ("trailing", "static")
INFERENCE_MODES = ("sync", "lagged")
REMAP_METHODS = ("bilinear", "conservative")
OUTPUT_FREQUENCIES = ("month", "year")
OUTPUT_UNITS = ("kg m-2 s-1", "mm/day")
TORCH_ALLOCATORS = ALLOCATORS
# The same names as precipdiff.perf.precision.PRECISIONS and
# precipdiff.bundle.compiled.POLICIES (not imported: this module stays torch-free;
# tests/python/test_server_config.py checks they agree).
PRECISION_CHOICES = ("bundle", "float32", "bf16", "fp16")
COMPILED_POLICIES = ("auto", "always", "never")
OUTPUT_CALIBRATION_CHOICES = ("bundle", "on", "off")
CALENDARS = (
    "standard",
    "gregorian",
    "proleptic_gregorian",
    "noleap",
    "365_day",
    "all_leap",
    "366_day",
    "360_day",
    "julian",
)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_REFTIME_RE = re.compile(r"^\d{1,4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?$")


@dataclass
class PluginConfig:
    """Settings of one embedded-server plugin, read from ``&precipdiff_nml``.

    Parameters
    ----------
    bundle_path : str
        Path of the model bundle (directory with manifest and weights). A relative
        path is taken relative to the namelist file's directory.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.
    strict_device : bool
        When True a CUDA device that is not available raises ``DeviceError``;
        when False (default) the plugin falls back to the CPU with a warning.
    members : int
        Ensemble members generated per window (>= 1).
    sampler_steps : int
        Diffusion sampler steps; 0 uses the bundle's default.
    seed : int
        Base seed; window ``n`` uses a seed derived from ``(seed, n)``.
    window_s : float
        Averaging window in seconds (default one day, 86400). Every timestep
        ``dt`` must divide it; it must divide a day or be a whole number of days.
    bias_correction : bool
        Apply the bundle's quantile delta mapping tables to the window-mean
        predictors before inference.
    qdm_mode : str
        Projection distribution of online QDM: ``"trailing"`` (default; a
        trailing estimate from the run's own window means, trend-preserving)
        or ``"static"`` (the ESM-historical distribution stored in the bundle,
        i.e. plain quantile mapping). See ``docs/qdm.md``.
    qdm_trailing_years : float
        Memory in years of the trailing projection distribution.
    return_mode : str
        What is handed back to the ESM: ``"member"`` (member ``return_member``),
        ``"mean"`` (ensemble mean) or ``"cycle"`` (member ``n mod members`` for
        window ``n``).
    return_member : int
        1-based member returned when ``return_mode = 'member'``.
    inference : str
        ``"sync"``: a window's result is ready at the step that closes it.
        ``"lagged"``: inference runs on a background thread while the ESM keeps
        stepping; the result is handed back when the next window closes.
    remap_method : str
        ESM lat-lon grid to the bundle's coarse grid: ``"bilinear"`` or
        ``"conservative"``.
    weights_to_bundle : str
        Optional ESMF/SCRIP weight file (netCDF) from the ESM grid to the bundle's
        coarse grid, for grids that are not regular lat-lon. Empty: computed.
    weights_to_model : str
        Optional ESMF/SCRIP weight file from the bundle's fine grid back to the ESM
        grid. Empty: conservative remap computed from the lat-lon grids.
    below_ground : str
        Policy for pressure levels below ground in 3-D fields: ``"constant"``,
        ``"extrapolate"`` or ``"error"`` (see :mod:`precipdiff.server.vertical`).
    output_units : str
        Units of the fields handed back: ``"kg m-2 s-1"`` (default) or ``"mm/day"``.
    conserve_mass : bool
        Ask the generator to rescale each member so its coarse-grained mean matches
        the regression's coarse precipitation.
    output_dir : str
        Directory of the fine-grid output stream; empty (default) writes none.
    output_frequency : str
        One output file per ``"month"`` or ``"year"``.
    output_prefix : str
        File name prefix of the output stream.
    output_rank : int
        The MPI rank that writes the output stream; -1 (default): every process
        that runs a plugin writes. With the MPI layer (``precipdiff_mpi``) only
        the inference rank runs a plugin, so the default is right; set a rank
        only when several processes run identical plugins on the full grid.
    reference_time : str
        Calendar date of model time 0 (``"YYYY-MM-DD hh:mm:ss"``), used for the
        output stream's time axis and its file split.
    calendar : str
        CF calendar of the model time.
    torch_threads : int
        Intra-op threads of torch in this process; 0 leaves torch's default.
    torch_allocator : str
        ``"auto"`` (default): a caching allocator for torch's CPU tensors when it can
        be built, torch's own otherwise; ``"caching"``: require it; ``"default"``:
        torch's own. The host's ``malloc`` settings are never changed
        (:mod:`precipdiff.perf.allocator`).
    flush_denormals : bool
        Flush denormals to zero inside inference calls (the host thread's
        floating-point environment is restored after every call). Off by default.
    precision : str
        Denoiser precision: ``"bundle"`` (the bundle's choice for the device),
        ``"float32"``, ``"bf16"``, or ``"fp16"`` (CUDA only).
    compiled_networks : str
        ``"auto"``: AOTInductor packages from ``precipdiff export`` where they match
        and were measured to pay; ``"always"``: require them; ``"never"``: eager.
    output_calibration : str
        Quantile mapping of the generated precipitation onto observations
        (:mod:`precipdiff.qdm.calibration`): ``"bundle"`` (default: as the bundle's
        manifest says; off when it has none), ``"on"`` (an error when the bundle
        has none) or ``"off"``.
    source : str
        Not a namelist key: the ``&precipdiff_nml`` text this config was read from.
    """

    bundle_path: str
    device: str = "auto"
    strict_device: bool = False
    members: int = 1
    sampler_steps: int = 0
    seed: int = 0
    window_s: float = 86400.0
    bias_correction: bool = False
    qdm_mode: str = "trailing"
    qdm_trailing_years: float = 20.0
    return_mode: str = "member"
    return_member: int = 1
    inference: str = "sync"
    remap_method: str = "conservative"
    weights_to_bundle: str = ""
    weights_to_model: str = ""
    below_ground: str = "constant"
    output_units: str = "kg m-2 s-1"
    conserve_mass: bool = False
    output_dir: str = ""
    output_frequency: str = "month"
    output_prefix: str = "precipdiff"
    output_rank: int = -1
    reference_time: str = "2000-01-01 00:00:00"
    calendar: str = "proleptic_gregorian"
    torch_threads: int = 0
    torch_allocator: str = "auto"
    flush_denormals: bool = False
    precision: str = "bundle"
    compiled_networks: str = "auto"
    output_calibration: str = "bundle"
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _check_type("bundle_path", self.bundle_path, str)
        if not self.bundle_path.strip():
            raise ConfigError("precipdiff_nml: bundle_path is empty; give the model bundle's path")
        for name in ("device", "return_mode", "inference", "remap_method", "below_ground"):
            _check_type(name, getattr(self, name), str)
        self.device = self.device.strip().lower()
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(
                f"precipdiff_nml: device = {self.device!r} is not one of 'auto', 'cpu', "
                "'cuda', 'cuda:N'"
            )
        for name in ("strict_device", "bias_correction", "conserve_mass", "flush_denormals"):
            _check_type(name, getattr(self, name), bool)
        for name in ("members", "sampler_steps", "seed", "return_member", "output_rank"):
            _check_type(name, getattr(self, name), int)
        _check_type("torch_threads", self.torch_threads, int)
        if self.members < 1:
            raise ConfigError(f"precipdiff_nml: members = {self.members} must be >= 1")
        if self.sampler_steps < 0:
            raise ConfigError(
                f"precipdiff_nml: sampler_steps = {self.sampler_steps} must be >= 0 "
                "(0 = bundle default)"
            )
        if self.seed < 0:
            raise ConfigError(f"precipdiff_nml: seed = {self.seed} must be >= 0")
        if isinstance(self.window_s, bool) or not isinstance(self.window_s, (int, float)):
            raise ConfigError(
                f"precipdiff_nml: window_s must be a number of seconds, got {self.window_s!r}"
            )
        self.window_s = float(self.window_s)
        if not self.window_s > 0.0:
            raise ConfigError(f"precipdiff_nml: window_s = {self.window_s} must be > 0")
        day = 86400.0
        ratio = day / self.window_s if self.window_s <= day else self.window_s / day
        if abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"precipdiff_nml: window_s = {self.window_s:g} s must divide a day (86400 s) "
                "or be a whole number of days"
            )
        _check_type("qdm_mode", self.qdm_mode, str)
        _choice("qdm_mode", self.qdm_mode, QDM_MODES)
        if isinstance(self.qdm_trailing_years, bool) or not isinstance(
            self.qdm_trailing_years, (int, float)
        ):
            raise ConfigError(
                f"precipdiff_nml: qdm_trailing_years = {self.qdm_trailing_years!r} must be a number"
            )
        self.qdm_trailing_years = float(self.qdm_trailing_years)
        if not self.qdm_trailing_years > 0.0:
            raise ConfigError(
                f"precipdiff_nml: qdm_trailing_years = {self.qdm_trailing_years} must be > 0"
            )
        _choice("return_mode", self.return_mode, RETURN_MODES)
        if not 1 <= self.return_member <= self.members:
            raise ConfigError(
                f"precipdiff_nml: return_member = {self.return_member} must be between 1 and "
                f"members = {self.members}"
            )
        _choice("inference", self.inference, INFERENCE_MODES)
        for name, choices in (
            ("torch_allocator", TORCH_ALLOCATORS),
            ("precision", PRECISION_CHOICES),
            ("compiled_networks", COMPILED_POLICIES),
            ("output_calibration", OUTPUT_CALIBRATION_CHOICES),
        ):
            _check_type(name, getattr(self, name), str)
            setattr(self, name, getattr(self, name).strip().lower())
            _choice(name, getattr(self, name), choices)
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError(
                "precipdiff_nml: precision = 'fp16' needs a CUDA device (device = 'cpu'); "
                "use 'bf16' or 'float32' on the CPU"
            )
        _choice("remap_method", self.remap_method, REMAP_METHODS)
        _choice("below_ground", self.below_ground, BELOW_GROUND_POLICIES)
        for name in (
            "weights_to_bundle",
            "weights_to_model",
            "output_dir",
            "output_frequency",
            "output_prefix",
            "output_units",
            "reference_time",
            "calendar",
        ):
            _check_type(name, getattr(self, name), str)
        _choice("output_units", self.output_units, OUTPUT_UNITS)
        _choice("output_frequency", self.output_frequency, OUTPUT_FREQUENCIES)
        _choice("calendar", self.calendar, CALENDARS)
        if not _REFTIME_RE.match(self.reference_time.strip()):
            raise ConfigError(
                f"precipdiff_nml: reference_time = {self.reference_time!r} is not a date "
                "'YYYY-MM-DD hh:mm:ss'"
            )
        if not self.output_prefix or "/" in self.output_prefix:
            raise ConfigError(
                f"precipdiff_nml: output_prefix = {self.output_prefix!r} must be a non-empty "
                "file name prefix without '/'"
            )
        if self.output_rank < -1:
            raise ConfigError(
                f"precipdiff_nml: output_rank = {self.output_rank} must be >= 0, or -1 for "
                "the process that runs the plugin"
            )
        if self.torch_threads < 0:
            raise ConfigError(
                f"precipdiff_nml: torch_threads = {self.torch_threads} must be >= 0 "
                "(0 = torch default)"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], base_dir: Path | None = None) -> PluginConfig:
        """Build a config from a mapping of namelist keys, rejecting unknown keys.

        Parameters
        ----------
        values : dict
            Key/value pairs (keys case-insensitive, as in Fortran).
        base_dir : pathlib.Path, optional
            Directory that relative paths (bundle, weight files, output directory)
            are resolved against.

        Returns
        -------
        PluginConfig
            The validated configuration.

        Raises
        ------
        ConfigError
            On unknown or missing keys and invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
        kw = {str(k).lower(): v for k, v in values.items()}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(
                f"&{NAMELIST_GROUP}: unknown key(s) {', '.join(unknown)}; known keys are "
                f"{', '.join(sorted(known))}"
            )
        if "bundle_path" not in kw:
            raise ConfigError(f"&{NAMELIST_GROUP}: bundle_path is required")
        if base_dir is not None:
            for key in ("bundle_path", "weights_to_bundle", "weights_to_model", "output_dir"):
                val = kw.get(key)
                if isinstance(val, str) and val.strip() and not Path(val).is_absolute():
                    bare = "/" not in val and not (base_dir / val).exists()
                    if key == "bundle_path" and bare:
                        continue  # a shipped bundle's name: precipdiff.bundle.find_bundle
                    kw[key] = str(base_dir / val)
        return cls(**kw)

    @classmethod
    def from_namelist(cls, path: str | Path) -> PluginConfig:
        """Read ``&precipdiff_nml`` from a Fortran namelist file.

        Parameters
        ----------
        path : str or pathlib.Path
            Namelist file; other groups in it (the ESM's own) are ignored.

        Returns
        -------
        PluginConfig
            The validated configuration, with ``source`` holding the group's text.

        Raises
        ------
        ConfigError
            When the file is missing or unreadable, has no ``&precipdiff_nml``
            group, or the group has unknown keys or invalid values.
        """
        import f90nml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"namelist file {str(p)!r} does not exist")
        try:
            nml = f90nml.read(str(p))
        except Exception as exc:  # f90nml raises assorted errors on bad syntax
            raise ConfigError(f"namelist file {str(p)!r} could not be parsed: {exc}") from exc
        if NAMELIST_GROUP not in nml:
            raise ConfigError(
                f"namelist file {str(p)!r} has no &{NAMELIST_GROUP} group "
                f"(groups found: {', '.join(nml.keys()) or 'none'})"
            )
        group = nml[NAMELIST_GROUP]
        if isinstance(group, list):
            raise ConfigError(f"namelist file {str(p)!r} has more than one &{NAMELIST_GROUP}")
        values = {k: _scalar(k, v) for k, v in group.items()}
        cfg = cls.from_dict(values, base_dir=p.resolve().parent)
        cfg.source = f90nml.Namelist({NAMELIST_GROUP: group}).__str__()
        return cfg

    def to_namelist_text(self) -> str:
        """Return the effective settings as a ``&precipdiff_nml`` group.

        Returns
        -------
        str
            Namelist text (written into output files and restarts).
        """
        import f90nml

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        return str(f90nml.Namelist({NAMELIST_GROUP: d}))


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, list):
        raise ConfigError(f"&{NAMELIST_GROUP}: {key} must be a single value, got a list {value}")
    return value


def _check_type(name: str, value: Any, typ: type) -> None:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"precipdiff_nml: {name} = {value!r} must be of type {typ.__name__} "
            f"(got {type(value).__name__})"
        )


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"precipdiff_nml: {name} = {value!r} is not one of {', '.join(map(repr, choices))}"
        )
