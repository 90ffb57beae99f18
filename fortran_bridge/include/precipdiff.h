/*
 * precipdiff.h -- public C ABI of libprecipdiff.
 *
 * The ESM (usually through the Fortran module `precipdiff`, see docs/bridge.md)
 * drives one or more plugin instances through opaque integer handles. Every
 * call returns a pd_status. PD_OK (0) is returned ONLY by a real success path:
 * if the embedded interpreter or the Python side could not be started, every
 * call returns a non-zero status and pd_last_error() says why.
 *
 * Arrays are passed as raw pointers plus their Fortran extents. A Fortran
 * array a(nlon, nlat) is the same memory as a C-order [nlat][nlon] array, so
 * nothing is ever transposed or copied on the way in; 3-D fields are
 * a(nlon, nlat, nlev) == C-order [nlev][nlat][nlon].
 *
 * Thread safety: any thread may call any function. Calls on one handle are
 * serialised by a lock per handle (a call from a second thread waits until the
 * first returns), so e.g. OpenMP threads may share an instance; calls on
 * different handles run concurrently wherever Python releases the GIL (numpy,
 * torch), and the GIL is released between calls. Error messages are per thread.
 * Floating-point traps of the host are masked while Python runs
 * and the host's floating-point environment is restored afterwards.
 * Nothing in the library ever terminates the process.
 */
#ifndef PRECIPDIFF_H
#define PRECIPDIFF_H

#ifdef __cplusplus
extern "C" {
#endif

#define PD_VERSION_MAJOR 0
#define PD_VERSION_MINOR 1
#define PD_VERSION_PATCH 0

/* Status codes. Values are part of the ABI: never renumber, only append. */
typedef enum pd_status {
  PD_OK = 0,                    /* success (only ever returned by a real success path) */
  PD_ERR_PYTHON_INIT = 1,       /* embedded interpreter or precipdiff could not start  */
  PD_ERR_NOT_INITIALISED = 2,   /* call on a handle that was never initialised         */
  PD_ERR_BAD_HANDLE = 3,        /* unknown or already finalised handle                 */
  PD_ERR_INVALID_ARGUMENT = 4,  /* null pointer, wrong shape, bad name, buffer too small */
  PD_ERR_CONFIG = 5,            /* namelist missing or invalid (ConfigError)           */
  PD_ERR_BUNDLE = 6,            /* model bundle missing/incompatible (BundleError)     */
  PD_ERR_INPUT = 7,             /* bad field values: NaN/Inf, range (InputError)       */
  PD_ERR_GRID = 8,              /* grid mismatch or remap impossible (GridError)       */
  PD_ERR_DEVICE = 9,            /* compute device unavailable (DeviceError)            */
  PD_ERR_PYTHON = 10,           /* any other Python exception (bug): see message       */
  PD_ERR_ALREADY_INITIALISED = 11, /* init on a handle that is already live            */
  PD_ERR_INTERNAL = 12          /* C-side failure (e.g. out of memory)                 */
} pd_status;

/* Handle value that never names a live plugin (Fortran handles start as this). */
#define PD_NO_HANDLE 0

/* Library version (compile-time constants of the built library). Always PD_OK. */
int pd_version(int *major, int *minor, int *patch);

/* Start the embedded interpreter if needed and check that the Python side is
 * usable. PD_OK when ready; PD_ERR_PYTHON_INIT (message in pd_last_error)
 * otherwise. Called implicitly by pd_plugin_create. */
int pd_ready(void);

/* Copy the last error message of the calling process into buf (NUL-terminated,
 * truncated to buflen-1 bytes). Returns the full message length in *len when
 * len is not NULL. Always PD_OK unless buf is NULL or buflen < 1. */
int pd_last_error(char *buf, int buflen, int *len);

/* Which Python executable the interpreter is (or would be) started from:
 * $PRECIPDIFF_PYTHON if set; in the build tree the configured Python; else
 * <prefix>/bin/python3.Y, then the first python on $PATH whose environment holds
 * precipdiff (docs/build.md). PD_ERR_PYTHON_INIT (with what was tried in
 * pd_last_error) when none qualifies. */
int pd_python_executable(char *buf, int buflen);

/* Create a plugin instance from a namelist file (&precipdiff_nml) on the ESM
 * grid given by 1-D coordinates in degrees.
 *   has_comm/comm_f : what comm_f (a Fortran MPI communicator handle, MPI_Fint,
 *                     i.e. comm%MPI_VAL for mpi_f08) is:
 *                     0 (PD_COMM_NONE): none, comm_f ignored;
 *                     1 (PD_COMM_RANK): the host's communicator; it only labels
 *                       messages with the rank (and gives &precipdiff_nml
 *                       output_rank its meaning);
 *                     2 (PD_COMM_MEMBERS): the communicator of the inference ranks
 *                       that share the ensemble (precipdiff_mpi's per-node mode):
 *                       each generates a block of the members and they exchange
 *                       them. This needs mpi4py in the embedded Python; without it
 *                       the call fails with PD_ERR_CONFIG (never silently the
 *                       whole ensemble on every rank).
 *   start_lon/start_lat, nlon_global/nlat_global : subdomain placement in the
 *                     global grid (1-based). Pass 1, 1, nlon, nlat for a full
 *                     grid; anything else returns PD_ERR_INVALID_ARGUMENT (a
 *                     decomposed ESM uses the Fortran module precipdiff_mpi, which
 *                     gathers the subdomains and calls this API on the full grid).
 * On success *handle > 0. On failure *handle == PD_NO_HANDLE. */
int pd_plugin_create(const char *nml_path, const double *lon, int nlon,
                     const double *lat, int nlat, int has_comm, int comm_f,
                     int start_lon, int start_lat, int nlon_global,
                     int nlat_global, int *handle);

/* Feed one field by name. values has Fortran shape (nlon, nlat, nlev); nlev=0
 * means a 2-D field (pressure must be NULL). For nlev>=1 pressure (Pa) has the
 * same shape as values. The plugin copies/accumulates; the pointer is not kept. */
int pd_plugin_set_field_f32(int handle, const char *name, const float *values,
                            int nlon, int nlat, int nlev, const float *pressure);
int pd_plugin_set_field_f64(int handle, const char *name, const double *values,
                            int nlon, int nlat, int nlev, const double *pressure);

/* Advance the plugin clock to model_time_s (seconds since the reference time)
 * with timestep dt_s. *ready = 1 when an accumulation window closed and new
 * output is available, 0 otherwise. */
int pd_plugin_step(int handle, double model_time_s, double dt_s, int *ready);

/* Copy the latest output into caller arrays: pr_fine Fortran shape
 * (nlon_fine, nlat_fine) and pr_model (nlon, nlat), float64. Either pointer may
 * be NULL to skip it. Returns PD_ERR_INPUT when no output is ready yet. */
int pd_plugin_get_output(int handle, double *pr_fine, int nlon_fine,
                         int nlat_fine, double *pr_model, int nlon, int nlat);

/* Shapes of the model (ESM) grid and of the fine output grid, Fortran order. */
int pd_plugin_shapes(int handle, int *nlon, int *nlat, int *nlon_fine,
                     int *nlat_fine);

/* Coordinates of the fine output grid (degrees), lengths nlon_fine / nlat_fine. */
int pd_plugin_fine_coords(int handle, double *lon_fine, int nlon_fine,
                          double *lat_fine, int nlat_fine);

/* Names of the fields the bundle needs, as one string separated by single
 * spaces, NUL-terminated. *count receives the number of names. */
int pd_plugin_required_fields(int handle, char *buf, int buflen, int *count);

int pd_plugin_write_restart(int handle, const char *path);
int pd_plugin_read_restart(int handle, const char *path);

/* Release a plugin. Destroying PD_NO_HANDLE is a no-op returning PD_OK
 * (finalize is idempotent); an unknown non-zero handle is PD_ERR_BAD_HANDLE. */
int pd_plugin_destroy(int handle);

/* Number of live plugin instances (0 before the interpreter started). */
int pd_plugin_count(int *count);

#ifdef __cplusplus
}
#endif
#endif /* PRECIPDIFF_H */
