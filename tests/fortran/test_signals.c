/* The embedded interpreter must leave the host's signal handlers alone
 * (PyConfig.install_signal_handlers = 0): a handler installed by the host for
 * SIGINT, SIGTERM and SIGFPE, and the SIGPIPE disposition, are unchanged after
 * the interpreter started and a plugin ran. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "precipdiff.h"

static void host_handler(int sig) { (void)sig; }

static int same_handler(int sig, void (*want)(int), const char *name) {
  struct sigaction now;
  sigaction(sig, NULL, &now);
  if (now.sa_handler != want) {
    fprintf(stderr, "%s handler changed by the embedded interpreter\n", name);
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  struct sigaction sa;
  double lon[4] = {0, 90, 180, 270}, lat[2] = {-45, 45};
  int handle = PD_NO_HANDLE, ok = 1;
  char msg[512];
  void (*pipe_before)(int);
  struct sigaction old_pipe;
  if (argc < 2) return 2;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host_handler;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGFPE, &sa, NULL);
  sigaction(SIGPIPE, NULL, &old_pipe);
  pipe_before = old_pipe.sa_handler;

  if (pd_plugin_create(argv[1], lon, 4, lat, 2, 0, 0, 1, 1, 4, 2, &handle) != PD_OK) {
    pd_last_error(msg, (int)sizeof msg, NULL);
    fprintf(stderr, "create failed: %s\n", msg);
    return 1;
  }
  ok &= same_handler(SIGINT, host_handler, "SIGINT");
  ok &= same_handler(SIGTERM, host_handler, "SIGTERM");
  ok &= same_handler(SIGFPE, host_handler, "SIGFPE");
  ok &= same_handler(SIGPIPE, pipe_before, "SIGPIPE");
  if (pd_plugin_destroy(handle) != PD_OK) return 1;
  if (!ok) return 1;
  printf("host signal handlers untouched: ok\n");
  return 0;
}
