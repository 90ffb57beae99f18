/* The GIL is released between calls: after the main thread started Python and
 * created a plugin, two other threads each drive their own handle at the same
 * time. If the main thread kept the GIL, they would deadlock (ctest TIMEOUT).
 * Each thread also checks that a failure message stays its own. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "precipdiff.h"

#define NLON 6
#define NLAT 3

static const char *g_nml;
static double g_lon[NLON] = {0, 30, 60, 90, 120, 150};
static double g_lat[NLAT] = {-45, 0, 45};

struct job {
  int handle;
  double value;
  int failed;
};

static void *drive(void *arg) {
  struct job *job = (struct job *)arg;
  double q[NLAT * NLON], psl[NLAT * NLON], fine[NLAT * 4 * NLON * 4], model[NLAT * NLON];
  char msg[512];
  int ready = 0, step, i;
  for (i = 0; i < NLAT * NLON; i++) {
    q[i] = job->value;
    psl[i] = 1.0;
  }
  for (step = 1; step <= 20; step++) {
    if (pd_plugin_set_field_f64(job->handle, "hus850", q, NLON, NLAT, 0, NULL) != PD_OK ||
        pd_plugin_set_field_f64(job->handle, "psl", psl, NLON, NLAT, 0, NULL) != PD_OK ||
        pd_plugin_step(job->handle, step * 7200.0, 7200.0, &ready) != PD_OK || !ready ||
        pd_plugin_get_output(job->handle, fine, NLON * 4, NLAT * 4, model, NLON, NLAT) != PD_OK) {
      pd_last_error(msg, (int)sizeof msg, NULL);
      fprintf(stderr, "handle %d step %d failed: %s\n", job->handle, step, msg);
      job->failed = 1;
      return NULL;
    }
    if (model[0] != job->value + 1.0 || fine[NLAT * 4 * NLON * 4 - 1] != job->value + 1.0) {
      fprintf(stderr, "handle %d: wrong result %g\n", job->handle, model[0]);
      job->failed = 1;
      return NULL;
    }
    /* A failure in this thread: its message must name this thread's bad handle. */
    if (pd_plugin_step(1000 + job->handle, 1.0, 1.0, &ready) != PD_ERR_BAD_HANDLE) {
      job->failed = 1;
      return NULL;
    }
    pd_last_error(msg, (int)sizeof msg, NULL);
    {
      char want[64];
      snprintf(want, sizeof want, "unknown handle %d", 1000 + job->handle);
      if (strstr(msg, want) == NULL) {
        fprintf(stderr, "thread of handle %d got another thread's message: %s\n", job->handle,
                msg);
        job->failed = 1;
        return NULL;
      }
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  struct job jobs[2] = {{0, 2.0, 0}, {0, 5.0, 0}};
  pthread_t threads[2];
  int i, count = -1;
  char msg[512];
  if (argc < 2) return 2;
  g_nml = argv[1];
  for (i = 0; i < 2; i++) {
    if (pd_plugin_create(g_nml, g_lon, NLON, g_lat, NLAT, 0, 0, 1, 1, NLON, NLAT,
                         &jobs[i].handle) != PD_OK) {
      pd_last_error(msg, (int)sizeof msg, NULL);
      fprintf(stderr, "create failed: %s\n", msg);
      return 1;
    }
  }
  for (i = 0; i < 2; i++) pthread_create(&threads[i], NULL, drive, &jobs[i]);
  for (i = 0; i < 2; i++) pthread_join(threads[i], NULL);
  for (i = 0; i < 2; i++) {
    if (jobs[i].failed) return 1;
    if (pd_plugin_destroy(jobs[i].handle) != PD_OK) return 1;
  }
  if (pd_plugin_count(&count) != PD_OK || count != 0) return 1;
  printf("two threads drove two handles concurrently: ok\n");
  return 0;
}
