/* Which Python does the installed libprecipdiff start, and does it start?
 * Prints "python: <path>" (or the search failure) and "ready: <status> <message>";
 * exit status 0 when the interpreter started and the precipdiff server is ready.
 * Used by tests/install/check_install.py to test the run-time Python rule
 * (docs/build.md, "Which Python the library starts"). */
#include <stdio.h>

#include "precipdiff.h"

int main(void) {
  char exe[4096], msg[4096];
  int len = 0, st;
  st = pd_python_executable(exe, (int)sizeof exe);
  if (st != PD_OK) {
    pd_last_error(msg, (int)sizeof msg, &len);
    printf("python: none (%s)\n", msg);
  } else {
    printf("python: %s\n", exe);
  }
  st = pd_ready();
  msg[0] = '\0';
  if (st != PD_OK) pd_last_error(msg, (int)sizeof msg, &len);
  printf("ready: %d %s\n", st, msg);
  return st == PD_OK ? 0 : 1;
}
