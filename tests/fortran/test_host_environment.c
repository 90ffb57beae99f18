/*
 * test_host_environment.c -- a host that checks precipdiff leaves its process alone.
 *
 * Usage: test_host_environment NML NLON NLAT LON0 DLON LAT0 DLAT NSTEPS DT
 *
 * Drives the plugin named by the namelist on a regular grid for NSTEPS steps (a window
 * closes at least once, so the networks run) and checks, around every call:
 *   - the calling thread's floating-point environment (enabled traps, rounding mode,
 *     raised flags, x87 control word, MXCSR with FTZ/DAZ) is identical before and after;
 *   - the host still computes denormal numbers (FTZ/DAZ not left on);
 *   - glibc still serves a large block with mmap after the plugin ran: nobody raised
 *     the host's mmap threshold (mallopt) -- a 64 MiB malloc must raise mallinfo2's
 *     hblkhd by at least 64 MiB.
 * The host enables two floating-point traps first, as many ESMs do. Prints
 * "CHECK ok|FAIL what" lines and "RESULT PASS" / "RESULT FAIL".
 */
#define _GNU_SOURCE
#include <fenv.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "precipdiff.h"

static int failures = 0;

static void check(int ok, const char *what) {
  printf("CHECK %s %s\n", ok ? "ok" : "FAIL", what);
  if (!ok) failures++;
}

static volatile float g_tiny = 2.0e-38f; /* a normal float; volatile: computed at run time */

static int host_makes_denormals(void) {
  fexcept_t flags;
  volatile float d;
  fegetexceptflag(&flags, FE_ALL_EXCEPT);
  d = g_tiny * 1.0e-3f; /* 2e-41: a denormal unless FTZ is on */
  fesetexceptflag(&flags, FE_ALL_EXCEPT); /* the check itself raises underflow */
  return d != 0.0f;
}

/* The parts of the environment that change arithmetic: enabled traps, rounding,
 * raised flags and, on x86-64, the x87 control word and the whole MXCSR (FTZ/DAZ,
 * SSE traps and rounding). fenv_t also holds the address of the last x87
 * instruction, which any code changes, so it is not compared byte for byte. */
typedef struct {
  int traps, round, flags;
  unsigned int control, mxcsr;
} env_state;

static env_state current_env(void) {
  env_state e;
  fenv_t raw;
  fegetenv(&raw);
  e.traps = fegetexcept();
  e.round = fegetround();
  e.flags = fetestexcept(FE_ALL_EXCEPT);
#if defined(__x86_64__) && defined(__GLIBC__)
  e.control = raw.__control_word;
  e.mxcsr = raw.__mxcsr;
#else
  e.control = 0;
  e.mxcsr = 0;
#endif
  return e;
}

static int same_env(const env_state *a) {
  env_state b = current_env();
  if (memcmp(a, &b, sizeof b) != 0) {
    printf("ENV traps %#x->%#x round %#x->%#x flags %#x->%#x control %#x->%#x mxcsr %#x->%#x\n",
           a->traps, b.traps, a->round, b.round, a->flags, b.flags, a->control, b.control,
           a->mxcsr, b.mxcsr);
    return 0;
  }
  return 1;
}

static int large_malloc_is_mmapped(void) {
  const size_t n = (size_t)64 << 20;
  struct mallinfo2 before = mallinfo2();
  char *p = malloc(n);
  struct mallinfo2 during;
  int ok;
  if (p == NULL) return 0;
  p[0] = 1;
  p[n - 1] = 1;
  during = mallinfo2();
  ok = during.hblkhd >= before.hblkhd + n;
  free(p);
  return ok;
}

static void report_error(const char *where, int status) {
  char msg[2048];
  int len = 0;
  pd_last_error(msg, (int)sizeof msg, &len);
  printf("ERROR %s: status %d: %s\n", where, status, msg);
}

static double field_value(const char *name) {
  if (strncmp(name, "hus", 3) == 0) return 0.007;
  if (strncmp(name, "ua", 2) == 0) return 5.0;
  if (strncmp(name, "va", 2) == 0) return -2.0;
  if (strncmp(name, "psl", 3) == 0) return 101300.0;
  if (strncmp(name, "ta", 2) == 0) return 280.0;
  return 1.0;
}

int main(int argc, char **argv) {
  int nlon, nlat, nsteps, handle = PD_NO_HANDLE, status, nfields = 0, ready = 0, windows = 0;
  int nlon_f = 0, nlat_f = 0, i, s;
  double lon0, dlon, lat0, dlat, dt;
  double *lon, *lat, *values, *fine, *model;
  char names[4096];
  env_state env;

  if (argc != 10) {
    fprintf(stderr, "usage: %s NML NLON NLAT LON0 DLON LAT0 DLAT NSTEPS DT\n", argv[0]);
    return 2;
  }
  nlon = atoi(argv[2]);
  nlat = atoi(argv[3]);
  lon0 = atof(argv[4]);
  dlon = atof(argv[5]);
  lat0 = atof(argv[6]);
  dlat = atof(argv[7]);
  nsteps = atoi(argv[8]);
  dt = atof(argv[9]);
  lon = malloc(sizeof(double) * (size_t)nlon);
  lat = malloc(sizeof(double) * (size_t)nlat);
  values = malloc(sizeof(double) * (size_t)nlon * (size_t)nlat);
  model = malloc(sizeof(double) * (size_t)nlon * (size_t)nlat);
  for (i = 0; i < nlon; i++) lon[i] = lon0 + dlon * i;
  for (i = 0; i < nlat; i++) lat[i] = lat0 + dlat * i;

  /* An ESM-like environment: traps on invalid and divide-by-zero. */
  feenableexcept(FE_INVALID | FE_DIVBYZERO);
  check(host_makes_denormals(), "host computes denormals before precipdiff");
  check(large_malloc_is_mmapped(), "a 64 MiB malloc is mmapped before precipdiff");

  env = current_env();
  status = pd_plugin_create(argv[1], lon, nlon, lat, nlat, 0, 0, 1, 1, nlon, nlat, &handle);
  if (status != PD_OK) {
    report_error("pd_plugin_create", status);
    return 1;
  }
  check(same_env(&env), "FP environment unchanged by init");
  check(host_makes_denormals(), "host computes denormals after init");
  status = pd_plugin_required_fields(handle, names, (int)sizeof names, &nfields);
  if (status != PD_OK) {
    report_error("pd_plugin_required_fields", status);
    return 1;
  }
  status = pd_plugin_shapes(handle, &nlon, &nlat, &nlon_f, &nlat_f);
  if (status != PD_OK) {
    report_error("pd_plugin_shapes", status);
    return 1;
  }
  fine = malloc(sizeof(double) * (size_t)nlon_f * (size_t)nlat_f);
  /* "name1 name2 ...": split in place into NUL-terminated names. */
  for (i = 0; names[i] != '\0'; i++)
    if (names[i] == ' ') names[i] = '\0';
  for (s = 1; s <= nsteps; s++) {
    char *name = names;
    for (i = 0; i < nfields; i++) {
      size_t k;
      double v = field_value(name);
      for (k = 0; k < (size_t)nlon * (size_t)nlat; k++) values[k] = v * (1.0 + 0.01 * (double)(k % 7));
      env = current_env();
      status = pd_plugin_set_field_f64(handle, name, values, nlon, nlat, 0, NULL);
      if (!same_env(&env)) check(0, "FP environment unchanged by set_field");
      if (status != PD_OK) {
        report_error("pd_plugin_set_field_f64", status);
        return 1;
      }
      name += strlen(name) + 1;
    }
    env = current_env();
    status = pd_plugin_step(handle, s * dt, dt, &ready);
    check(same_env(&env), ready ? "FP environment unchanged by a step that ran the networks"
                                : "FP environment unchanged by a step");
    if (status != PD_OK) {
      report_error("pd_plugin_step", status);
      return 1;
    }
    if (ready) {
      windows++;
      status = pd_plugin_get_output(handle, fine, nlon_f, nlat_f, model, nlon, nlat);
      if (status != PD_OK) {
        report_error("pd_plugin_get_output", status);
        return 1;
      }
    }
  }
  check(windows > 0, "at least one window produced a result (the networks ran)");
  check(host_makes_denormals(), "host computes denormals after the networks ran");
  check(large_malloc_is_mmapped(), "a 64 MiB malloc is still mmapped after the networks ran");
  env = current_env();
  status = pd_plugin_destroy(handle);
  check(status == PD_OK, "finalize");
  check(same_env(&env), "FP environment unchanged by finalize");
  printf("WINDOWS %d\n", windows);
  printf("RESULT %s\n", failures ? "FAIL" : "PASS");
  free(lon);
  free(lat);
  free(values);
  free(model);
  free(fine);
  return failures ? 1 : 0;
}
