"""Output stream: every member of the fine-grid precipitation to CF netCDF files.

One process (the one running the plugin, or the namelist's ``output_rank``)
writes one file per month or year,
``<output_dir>/<output_prefix>_<YYYY-MM>.nc`` or ``..._<YYYY>.nc``, with
``pr(time, member, lat, lon)`` for every window, the window bounds as
``time_bnds`` and the run's metadata (bundle hash, effective namelist, seed) as
global attributes. The ESM's own diagnostics never see the fine grid.

Files are written with :class:`precipdiff.io.writers.PrecipStreamWriter`: a
month (or year) is built in a hidden temporary file next to its final name,
flushed after every window, and renamed onto the final name when the next
month starts or the plugin is closed, so a reader never sees a half-written
file. A run restarted in the middle of a month first copies the windows before
its restart point from the published file of that month, then continues; a
rerun after a restart therefore leaves no duplicates and no gaps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.errors import InputError
from precipdiff.server.config import PluginConfig

MM_PER_DAY_TO_KG_M2_S = 1.0 / 86400.0


class OutputStream:
    """Writer of the fine-grid ensemble, one netCDF file per month or year.

    Parameters
    ----------
    config : PluginConfig
        Namelist settings (``output_dir``, ``output_frequency``, ``output_prefix``,
        ``output_units``, ``reference_time``, ``calendar``, ``window_s``,
        ``members``).
    fine_lat, fine_lon : numpy.ndarray
        Fine-grid coordinates in degrees.
    bundle_id : str
        Identifier (hash) of the model bundle, recorded in every file.
    """

    def __init__(
        self,
        config: PluginConfig,
        fine_lat: np.ndarray,
        fine_lon: np.ndarray,
        bundle_id: str,
    ) -> None:
        from precipdiff.grids import LatLonGrid

        self.config = config
        self.directory = Path(config.output_dir)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"precipdiff_nml: output_dir = {config.output_dir!r} cannot be created: {exc}"
            ) from exc
        self.grid = LatLonGrid(lat=np.asarray(fine_lat), lon=np.asarray(fine_lon))
        self.bundle_id = bundle_id
        ref = config.reference_time.strip().replace("T", " ")
        if len(ref) <= 10:
            ref += " 00:00:00"
        self.time_units = f"seconds since {ref}"
        self._writer: Any = None
        self._path: Path | None = None

    def file_for(self, window: int) -> Path:
        """Return the file that window ``window`` is written to.

        Parameters
        ----------
        window : int
            Window index.

        Returns
        -------
        pathlib.Path
            ``<output_dir>/<prefix>_<YYYY-MM>.nc`` (monthly) or ``_<YYYY>.nc``.
        """
        import cftime

        start = cftime.num2date(
            window * self.config.window_s, self.time_units, calendar=self.config.calendar
        )
        tag = (
            f"{start.year:04d}"
            if self.config.output_frequency == "year"
            else (f"{start.year:04d}-{start.month:02d}")
        )
        return self.directory / f"{self.config.output_prefix}_{tag}.nc"

    def write(self, window: int, members_mm: np.ndarray) -> None:
        """Write all members of one window.

        Parameters
        ----------
        window : int
            Window index (its time bounds are ``[n, n + 1) * window_s``).
        members_mm : numpy.ndarray
            ``(members, nlat_f, nlon_f)`` precipitation in mm/day.
        """
        path = self.file_for(window)
        if path != self._path or self._writer is None:
            self._finish()
            self._start(path, window)
        assert self._writer is not None
        w = self.config.window_s
        t0, t1 = window * w, (window + 1) * w
        self._writer.append(members_mm, 0.5 * (t0 + t1), bounds=(t0, t1))

    def close(self) -> None:
        """Publish the file being written (idempotent)."""
        self._finish()

    def _finish(self) -> None:
        if self._writer is not None:
            writer, self._writer, self._path = self._writer, None, None
            writer.finalize()

    def _start(self, path: Path, window: int) -> None:
        from precipdiff.io.writers import PrecipStreamWriter

        cfg = self.config
        carried = self._carry_over(path, window) if path.exists() else []
        attrs = {
            "title": "precipdiff fine-grid precipitation ensemble (online, embedded in an ESM)",
            "seed": int(cfg.seed),
            "members": int(cfg.members),
            "window_s": float(cfg.window_s),
            "return_mode": cfg.return_mode,
            "inference": cfg.inference,
            "bias_correction": "on" if cfg.bias_correction else "off",
            "namelist": cfg.to_namelist_text(),
        }
        writer = PrecipStreamWriter(
            path,
            self.grid,
            members=cfg.members,
            units=cfg.output_units,
            calendar=cfg.calendar,
            time_units=self.time_units,
            attrs=attrs,
            bundle_hash=self.bundle_id,
            command_line="precipdiff embedded server (&precipdiff_nml)",
            time_bounds=True,
            sync_every=1,
        )
        try:
            for field, t, bounds in carried:
                writer.append(field, t, bounds=bounds)
        except BaseException:
            writer.abort()
            raise
        self._writer, self._path = writer, path

    def _carry_over(
        self, path: Path, window: int
    ) -> list[tuple[np.ndarray, float, tuple[float, float]]]:
        """Windows before ``window`` already published in ``path`` (mm/day)."""
        from precipdiff.io import import_netcdf4

        nc4 = import_netcdf4()
        cfg = self.config
        start = window * cfg.window_s
        factor = MM_PER_DAY_TO_KG_M2_S if cfg.output_units == "kg m-2 s-1" else 1.0
        out: list[tuple[np.ndarray, float, tuple[float, float]]] = []
        try:
            ds = nc4.Dataset(str(path), "r")
        except OSError as exc:
            raise InputError(f"output file {str(path)!r} cannot be read back: {exc}") from exc
        with ds:
            ok = (
                "pr" in ds.variables
                and "time_bnds" in ds.variables
                and "member" in ds.dimensions
                and len(ds.dimensions["member"]) == cfg.members
                and tuple(ds["pr"].shape[2:]) == self.grid.shape
            )
            if not ok:
                raise InputError(
                    f"output file {str(path)!r} exists but was not written by a precipdiff run "
                    f"with members = {cfg.members} on this bundle's fine grid; move it away or "
                    "change output_dir"
                )
            if ds["time"].units != self.time_units:
                raise InputError(
                    f"output file {str(path)!r} has time units {ds['time'].units!r}, this run "
                    f"{self.time_units!r} (reference_time changed?)"
                )
            bnds = np.asarray(ds["time_bnds"][:], dtype=np.float64)
            for i in range(bnds.shape[0]):
                if bnds[i, 0] < start - 1e-3:
                    pr = np.asarray(ds["pr"][i], dtype=np.float64) / factor
                    t = float(np.asarray(ds["time"][i]))
                    out.append((pr, t, (float(bnds[i, 0]), float(bnds[i, 1]))))
        return out
