/*
 * precipdiff_capi.c -- the C ABI of libprecipdiff (see include/precipdiff.h).
 *
 * Responsibilities of this layer (and nothing else):
 *   - start the embedded interpreter from C with PyConfig, pointing at the
 *     Python found by pd_python_search.c ($PRECIPDIFF_PYTHON, build tree, prefix, PATH), so
 *     it works in a clean environment and under mpirun; then release the GIL;
 *   - refuse to treat cffi's "init failed, return 0" as success: the Python
 *     side must answer pdpy_ready() with the ready magic first;
 *   - mask the host's floating-point traps around every call into Python and
 *     restore the host's floating-point environment afterwards;
 *   - serialise the calls on one handle (a mutex per handle, taken before Python is
 *     entered, so a waiting thread holds neither the GIL nor anything else);
 *   - keep the last error message; never call exit() or abort().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fenv.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "precipdiff.h"
#include "pd_embed_api.h"
#include "pd_python_search.h"

#ifndef PRECIPDIFF_DEFAULT_PYTHON
#error "PRECIPDIFF_DEFAULT_PYTHON must be defined at compile time (CMake does)"
#endif

#define PDPY_READY_MAGIC 0x50445259 /* "PDRY", precipdiff.server.capi.READY_MAGIC */
#define PD_ERRBUF 4096

/* Last error of the calling thread: OpenMP threads driving different handles do
 * not see each other's messages. */
static _Thread_local char g_err[PD_ERRBUF];
static char g_init_err[PD_ERRBUF]; /* why start-up failed (sticky) */
/* 0 not tried, 1 ready, -1 failed. Read without the lock on every call (the fast
 * path), so it is atomic: the acquire load pairs with the release store made under
 * the lock once start-up is complete, and a thread that sees 1 also sees everything
 * start-up wrote. */
static _Atomic int g_state = 0;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static int set_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return status;
}

/* Which Python to start: the search rule lives in pd_python_search.c. Computed once;
 * NULL when nothing qualifies (g_python_tried then says what was tried). */
static char g_python[4096], g_python_source[256], g_python_tried[PD_ERRBUF];
static pthread_once_t g_python_once = PTHREAD_ONCE_INIT;
static int g_python_found = 0;
static void find_python_once(void) {
  g_python_found = pd_find_python(g_python, sizeof g_python, g_python_source,
                                  sizeof g_python_source, g_python_tried,
                                  sizeof g_python_tried) == 0;
}

static const char *python_executable(const char **source) {
  pthread_once(&g_python_once, find_python_once);
  if (source) *source = g_python_found ? g_python_source : "search";
  return g_python_found ? g_python : NULL;
}

/* Start the interpreter (once). Must run with FP traps masked. */
static int start_python(void) {
  const char *source = NULL;
  const char *exe = python_executable(&source);
  PyStatus st;
  PyConfig config;

  if (Py_IsInitialized()) return PD_OK; /* host already runs Python: use it */
  if (exe == NULL) {
    return set_error(PD_ERR_PYTHON_INIT,
                     "no Python environment with precipdiff found for libprecipdiff; tried: "
                     "%s. Set PRECIPDIFF_PYTHON to the python of the environment where "
                     "precipdiff is installed (docs/build.md)",
                     g_python_tried);
  }
  if (access(exe, X_OK) != 0) {
    return set_error(PD_ERR_PYTHON_INIT,
                     "Python executable '%s' (from the %s) does not exist or is not "
                     "executable; set PRECIPDIFF_PYTHON to the python of the environment "
                     "where precipdiff is installed",
                     exe, source);
  }
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0; /* the ESM owns SIGINT etc. */
  config.parse_argv = 0;
  st = PyConfig_SetBytesString(&config, &config.program_name, exe);
  if (!PyStatus_Exception(st))
    st = PyConfig_SetBytesString(&config, &config.executable, exe);
  if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    /* Never Py_ExitStatusException: that would exit the host. */
    return set_error(PD_ERR_PYTHON_INIT,
                     "cannot start the embedded Python from '%s' (from the %s): %s%s%s",
                     exe, source, st.func ? st.func : "", st.func ? ": " : "",
                     st.err_msg ? st.err_msg : "unknown error");
  }
  PyEval_SaveThread(); /* release the GIL between calls */
  return PD_OK;
}

/* Make sure the interpreter runs and the Python side is installed. */
static int ensure_ready(void) {
  int status = PD_OK;
  fenv_t env;
  if (atomic_load_explicit(&g_state, memory_order_acquire) == 1) return PD_OK;
  pthread_mutex_lock(&g_lock);
  if (atomic_load_explicit(&g_state, memory_order_relaxed) == 0) {
    feholdexcept(&env);
    status = start_python();
    if (status == PD_OK) {
      int magic;
#if PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030C0000
      /* cffi (< 3.12) uses PyCapsule_Type.tp_version_tag as a start-up spin lock
       * and expects it to be 0. Once any code has looked up an attribute on the
       * capsule type (torch does), the tag is non-zero: cffi then asserts (debug)
       * or spins forever (release). PyType_Modified is the official way to drop
       * the type's cached version tag back to 0; the next lookup assigns a new one. */
      PyGILState_STATE gil = PyGILState_Ensure();
      PyType_Modified(&PyCapsule_Type);
      PyGILState_Release(gil);
#endif
      magic = pdpy_ready();
      if (magic != PDPY_READY_MAGIC) {
        char buf[PD_ERRBUF];
        int n = pdpy_import_error(buf, (int)sizeof buf);
        if (n > 0) {
          status = set_error(PD_ERR_PYTHON_INIT, "%s", buf);
        } else {
          status = set_error(PD_ERR_PYTHON_INIT,
                             "the embedded Python started from '%s' but the precipdiff "
                             "server did not initialise (cffi init code failed; its "
                             "traceback is on stderr)",
                             python_executable(NULL));
        }
      }
    }
    fesetenv(&env);
    if (status == PD_OK) {
      atomic_store_explicit(&g_state, 1, memory_order_release);
    } else {
      atomic_store_explicit(&g_state, -1, memory_order_release);
      memcpy(g_init_err, g_err, sizeof g_err);
    }
  }
  if (atomic_load_explicit(&g_state, memory_order_relaxed) == -1) {
    memcpy(g_err, g_init_err, sizeof g_err);
    status = PD_ERR_PYTHON_INIT;
  }
  pthread_mutex_unlock(&g_lock);
  return status;
}

/* One mutex per handle: calls on one handle are serialised (threads of the host may
 * share an instance; numpy/torch release the GIL inside a call, so the GIL alone does
 * not keep a second thread out of a plugin halfway through a step). Handles are small
 * positive integers, never reused; their mutexes live in chunks that are allocated on
 * first use and never freed or moved, so a lookup is one atomic load. Handles beyond
 * the table share one mutex (correct, only coarser). Uncontended cost: tens of ns. */
#define PD_LOCK_CHUNK 1024
#define PD_LOCK_CHUNKS 256
static _Atomic(pthread_mutex_t *) g_handle_locks[PD_LOCK_CHUNKS];
static pthread_mutex_t g_shared_handle_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_mutex_t *handle_lock(int handle) {
  unsigned idx, c, i;
  pthread_mutex_t *chunk;
  if (handle <= 0) return NULL; /* PD_NO_HANDLE or invalid: the call reports it */
  idx = (unsigned)handle;
  c = idx / PD_LOCK_CHUNK;
  if (c >= PD_LOCK_CHUNKS) return &g_shared_handle_lock;
  chunk = atomic_load_explicit(&g_handle_locks[c], memory_order_acquire);
  if (chunk == NULL) {
    pthread_mutex_lock(&g_lock);
    chunk = atomic_load_explicit(&g_handle_locks[c], memory_order_relaxed);
    if (chunk == NULL) {
      chunk = malloc(sizeof *chunk * PD_LOCK_CHUNK);
      if (chunk != NULL) {
        for (i = 0; i < PD_LOCK_CHUNK; i++) pthread_mutex_init(&chunk[i], NULL);
        atomic_store_explicit(&g_handle_locks[c], chunk, memory_order_release);
      }
    }
    pthread_mutex_unlock(&g_lock);
    if (chunk == NULL) return &g_shared_handle_lock;
  }
  return &chunk[idx % PD_LOCK_CHUNK];
}

/* After a failing pdpy_* call, fetch its message from the Python side. */
static int python_failed(int status, const char *where) {
  char buf[PD_ERRBUF];
  int n = pdpy_last_error(buf, (int)sizeof buf);
  if (n > 0)
    return set_error(status, "%s", buf);
  return set_error(status, "%s failed with status %d (no message from Python)", where,
                   status);
}

/* Call into Python with traps masked; map failures to the last error. */
#define PD_CALL(where, expr)                                \
  do {                                                      \
    int pd_st_ = ensure_ready();                            \
    fenv_t pd_env_;                                         \
    if (pd_st_ != PD_OK) return pd_st_;                     \
    feholdexcept(&pd_env_);                                 \
    pd_st_ = (expr);                                        \
    if (pd_st_ != PD_OK) pd_st_ = python_failed(pd_st_, where); \
    fesetenv(&pd_env_);                                     \
    return pd_st_;                                          \
  } while (0)

/* PD_CALL holding the handle's mutex for the whole call (message fetch included). */
#define PD_CALL_ON(handle, where, expr)                         \
  do {                                                          \
    int pd_st_ = ensure_ready();                                \
    pthread_mutex_t *pd_mx_ = handle_lock(handle);              \
    fenv_t pd_env_;                                             \
    if (pd_st_ != PD_OK) return pd_st_;                         \
    if (pd_mx_ != NULL) pthread_mutex_lock(pd_mx_);             \
    feholdexcept(&pd_env_);                                     \
    pd_st_ = (expr);                                            \
    if (pd_st_ != PD_OK) pd_st_ = python_failed(pd_st_, where); \
    fesetenv(&pd_env_);                                         \
    if (pd_mx_ != NULL) pthread_mutex_unlock(pd_mx_);           \
    return pd_st_;                                              \
  } while (0)

#define PD_NEED_HANDLE(where, handle)                                                    \
  do {                                                                                   \
    if ((handle) == PD_NO_HANDLE)                                                        \
      return set_error(PD_ERR_NOT_INITIALISED,                                           \
                       "%s: handle is PD_NO_HANDLE (0): call precipdiff_init before " \
                       "using it",                                                       \
                       where);                                                           \
  } while (0)

int pd_version(int *major, int *minor, int *patch) {
  if (major) *major = PD_VERSION_MAJOR;
  if (minor) *minor = PD_VERSION_MINOR;
  if (patch) *patch = PD_VERSION_PATCH;
  return PD_OK;
}

int pd_ready(void) { return ensure_ready(); }

int pd_last_error(char *buf, int buflen, int *len) {
  size_t n = strlen(g_err);
  if (len) *len = (int)n;
  if (buf == NULL || buflen < 1) return PD_ERR_INVALID_ARGUMENT;
  if (n > (size_t)(buflen - 1)) n = (size_t)(buflen - 1);
  memcpy(buf, g_err, n);
  buf[n] = '\0';
  return PD_OK;
}

int pd_python_executable(char *buf, int buflen) {
  const char *exe = python_executable(NULL);
  size_t n;
  if (buf == NULL || buflen < 1) return PD_ERR_INVALID_ARGUMENT;
  if (exe == NULL) {
    buf[0] = '\0';
    return set_error(PD_ERR_PYTHON_INIT,
                     "no Python environment with precipdiff found; tried: %s", g_python_tried);
  }
  n = strlen(exe);
  if (n > (size_t)(buflen - 1))
    return set_error(PD_ERR_INVALID_ARGUMENT,
                     "pd_python_executable: buffer of %d bytes too small for %zu",
                     buflen, n + 1);
  memcpy(buf, exe, n + 1);
  return PD_OK;
}

int pd_plugin_create(const char *nml_path, const double *lon, int nlon, const double *lat,
                     int nlat, int has_comm, int comm_f, int start_lon, int start_lat,
                     int nlon_global, int nlat_global, int *handle) {
  if (handle == NULL)
    return set_error(PD_ERR_INVALID_ARGUMENT, "precipdiff_init: handle is NULL");
  *handle = PD_NO_HANDLE;
  if (nml_path == NULL || lon == NULL || lat == NULL)
    return set_error(PD_ERR_INVALID_ARGUMENT,
                     "precipdiff_init: nml_file, lon or lat is NULL");
  if (nlon < 1 || nlat < 1)
    return set_error(PD_ERR_INVALID_ARGUMENT,
                     "precipdiff_init: empty grid (nlon=%d, nlat=%d)", nlon, nlat);
  PD_CALL("precipdiff_init",
          pdpy_create(nml_path, lon, nlon, lat, nlat, has_comm, comm_f, start_lon,
                      start_lat, nlon_global, nlat_global, handle));
}

static int set_field(int handle, const char *name, int itemsize, const void *values,
                     int nlon, int nlat, int nlev, const void *pressure) {
  PD_NEED_HANDLE("precipdiff_set_field", handle);
  if (name == NULL || values == NULL)
    return set_error(PD_ERR_INVALID_ARGUMENT, "precipdiff_set_field: name or values is NULL");
  if (nlon < 0 || nlat < 0 || nlev < 0)
    return set_error(PD_ERR_INVALID_ARGUMENT,
                     "precipdiff_set_field: negative extent (nlon=%d, nlat=%d, nlev=%d) for "
                     "field '%s'",
                     nlon, nlat, nlev, name);
  if (nlev > 0 && pressure == NULL)
    return set_error(PD_ERR_INVALID_ARGUMENT,
                     "precipdiff_set_field: 3-D field '%s' needs its pressure (Pa)", name);
  PD_CALL_ON(handle, "precipdiff_set_field",
          pdpy_set_field(handle, name, itemsize, values, nlon, nlat, nlev, pressure));
}

int pd_plugin_set_field_f32(int handle, const char *name, const float *values, int nlon,
                            int nlat, int nlev, const float *pressure) {
  return set_field(handle, name, 4, values, nlon, nlat, nlev, pressure);
}

int pd_plugin_set_field_f64(int handle, const char *name, const double *values, int nlon,
                            int nlat, int nlev, const double *pressure) {
  return set_field(handle, name, 8, values, nlon, nlat, nlev, pressure);
}

int pd_plugin_step(int handle, double model_time_s, double dt_s, int *ready) {
  if (ready == NULL) return set_error(PD_ERR_INVALID_ARGUMENT, "precipdiff_run: ready is NULL");
  *ready = 0;
  PD_NEED_HANDLE("precipdiff_run", handle);
  PD_CALL_ON(handle, "precipdiff_run", pdpy_step(handle, model_time_s, dt_s, ready));
}

int pd_plugin_get_output(int handle, double *pr_fine, int nlon_fine, int nlat_fine,
                         double *pr_model, int nlon, int nlat) {
  PD_NEED_HANDLE("precipdiff_get_output", handle);
  PD_CALL_ON(handle, "precipdiff_get_output",
          pdpy_get_output(handle, pr_fine, nlon_fine, nlat_fine, pr_model, nlon, nlat));
}

int pd_plugin_shapes(int handle, int *nlon, int *nlat, int *nlon_fine, int *nlat_fine) {
  if (!nlon || !nlat || !nlon_fine || !nlat_fine)
    return set_error(PD_ERR_INVALID_ARGUMENT, "precipdiff_shapes: NULL output argument");
  *nlon = *nlat = *nlon_fine = *nlat_fine = 0;
  PD_NEED_HANDLE("precipdiff_shapes", handle);
  PD_CALL_ON(handle, "precipdiff_shapes", pdpy_shapes(handle, nlon, nlat, nlon_fine, nlat_fine));
}

int pd_plugin_fine_coords(int handle, double *lon_fine, int nlon_fine, double *lat_fine,
                          int nlat_fine) {
  PD_NEED_HANDLE("precipdiff_fine_coords", handle);
  PD_CALL_ON(handle, "precipdiff_fine_coords",
          pdpy_fine_coords(handle, lon_fine, nlon_fine, lat_fine, nlat_fine));
}

int pd_plugin_required_fields(int handle, char *buf, int buflen, int *count) {
  if (count) *count = 0;
  PD_NEED_HANDLE("precipdiff_required_fields", handle);
  PD_CALL_ON(handle, "precipdiff_required_fields", pdpy_required_fields(handle, buf, buflen, count));
}

int pd_plugin_write_restart(int handle, const char *path) {
  PD_NEED_HANDLE("precipdiff_write_restart", handle);
  PD_CALL_ON(handle, "precipdiff_write_restart", pdpy_write_restart(handle, path));
}

int pd_plugin_read_restart(int handle, const char *path) {
  PD_NEED_HANDLE("precipdiff_read_restart", handle);
  PD_CALL_ON(handle, "precipdiff_read_restart", pdpy_read_restart(handle, path));
}

int pd_plugin_destroy(int handle) {
  if (handle == PD_NO_HANDLE) return PD_OK; /* finalize is idempotent */
  PD_CALL_ON(handle, "precipdiff_finalize", pdpy_destroy(handle));
}

int pd_plugin_count(int *count) {
  if (count == NULL) return set_error(PD_ERR_INVALID_ARGUMENT, "pd_plugin_count: count is NULL");
  *count = 0;
  if (atomic_load_explicit(&g_state, memory_order_acquire) != 1)
    return PD_OK; /* no interpreter, no plugins */
  PD_CALL("pd_plugin_count", pdpy_count(count));
}
