/* One handle driven from several threads at once (e.g. OpenMP threads of an ESM
 * calling the same instance): the library serialises the calls per handle, so none
 * overlaps inside the plugin. The plugin (pd_fake_plugin.SlowPlugin) sleeps with the
 * GIL released inside each call and fails if a second call enters meanwhile.
 * Each thread feeds one field of its own (hus850 or psl) in turn with the steps. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "precipdiff.h"

#define NLON 6
#define NLAT 3
#define NTHREADS 4
#define NCALLS 25

static int g_handle;

struct job {
  int index;
  int failed;
};

static void *hammer(void *arg) {
  struct job *job = (struct job *)arg;
  double v[NLAT * NLON];
  char msg[512];
  int i, nlon = 0, nlat = 0, nf1 = 0, nf2 = 0;
  for (i = 0; i < NLAT * NLON; i++) v[i] = 1.0 + job->index;
  for (i = 0; i < NCALLS; i++) {
    /* set_field may legitimately fail with "set twice in the same timestep" (the
     * threads race for the step); what must never happen is a call inside a call. */
    int st = pd_plugin_set_field_f64(g_handle, job->index % 2 ? "psl" : "hus850", v, NLON,
                                     NLAT, 0, NULL);
    if (st != PD_OK) {
      pd_last_error(msg, (int)sizeof msg, NULL);
      if (strstr(msg, "not serialised") != NULL) {
        fprintf(stderr, "thread %d: %s\n", job->index, msg);
        job->failed = 1;
        return NULL;
      }
    }
    if (pd_plugin_shapes(g_handle, &nlon, &nlat, &nf1, &nf2) != PD_OK || nlon != NLON) {
      job->failed = 1;
      return NULL;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  struct job jobs[NTHREADS];
  pthread_t threads[NTHREADS];
  int i, failed = 0;
  char msg[512];
  double lon[NLON] = {0, 30, 60, 90, 120, 150}, lat[NLAT] = {-45, 0, 45};
  if (argc < 2) return 2;
  if (pd_plugin_create(argv[1], lon, NLON, lat, NLAT, 0, 0, 1, 1, NLON, NLAT, &g_handle) !=
      PD_OK) {
    pd_last_error(msg, (int)sizeof msg, NULL);
    fprintf(stderr, "create failed: %s\n", msg);
    return 1;
  }
  for (i = 0; i < NTHREADS; i++) {
    jobs[i].index = i;
    jobs[i].failed = 0;
    pthread_create(&threads[i], NULL, hammer, &jobs[i]);
  }
  for (i = 0; i < NTHREADS; i++) {
    pthread_join(threads[i], NULL);
    failed |= jobs[i].failed;
  }
  pd_plugin_destroy(g_handle);
  if (failed) {
    fprintf(stderr, "FAIL: calls on one handle overlapped\n");
    return 1;
  }
  printf("ok: %d threads x %d calls on one handle never overlapped\n", NTHREADS, NCALLS);
  return 0;
}
