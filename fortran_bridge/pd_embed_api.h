/* Functions that the cffi-embedded Python server exports to the C layer.
 * This file is read twice: #included by precipdiff_capi.c and passed verbatim to
 * ffibuilder.embedding_api() by build_cffi.py. Keep it to plain C declarations
 * (no preprocessor lines): it is the single source of truth for both sides.
 * Every function returns a pd_status; pdpy_ready returns the ready magic
 * 0x50445259 only from the installed precipdiff.server.capi (cffi returns 0
 * when its init code failed, which must never read as success). */
int pdpy_ready(void);
int pdpy_import_error(char *buf, int buflen);
int pdpy_last_error(char *buf, int buflen);
int pdpy_create(const char *nml_path, const double *lon, int nlon, const double *lat, int nlat, int has_comm, int comm_f, int start_lon, int start_lat, int nlon_global, int nlat_global, int *handle);
int pdpy_set_field(int handle, const char *name, int itemsize, const void *values, int nlon, int nlat, int nlev, const void *pressure);
int pdpy_step(int handle, double model_time_s, double dt_s, int *ready);
int pdpy_get_output(int handle, double *pr_fine, int nlon_fine, int nlat_fine, double *pr_model, int nlon, int nlat);
int pdpy_shapes(int handle, int *nlon, int *nlat, int *nlon_fine, int *nlat_fine);
int pdpy_fine_coords(int handle, double *lon_fine, int nlon_fine, double *lat_fine, int nlat_fine);
int pdpy_required_fields(int handle, char *buf, int buflen, int *count);
int pdpy_write_restart(int handle, const char *path);
int pdpy_read_restart(int handle, const char *path);
int pdpy_destroy(int handle);
int pdpy_count(int *count);
