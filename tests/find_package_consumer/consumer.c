/* C consumer of the installed header and library: version, and a call on
 * PD_NO_HANDLE that must fail with PD_ERR_NOT_INITIALISED and a message,
 * without starting Python. */
#include <stdio.h>
#include <string.h>

#include "precipdiff.h"

int main(void) {
  int major, minor, patch, ready = 7, len = 0;
  char msg[512];
  pd_version(&major, &minor, &patch);
  if (major != PD_VERSION_MAJOR || minor != PD_VERSION_MINOR) {
    fprintf(stderr, "header %d.%d and library %d.%d disagree\n", PD_VERSION_MAJOR,
            PD_VERSION_MINOR, major, minor);
    return 1;
  }
  if (pd_plugin_step(PD_NO_HANDLE, 1.0, 1.0, &ready) != PD_ERR_NOT_INITIALISED || ready != 0) {
    fprintf(stderr, "step on PD_NO_HANDLE did not fail as expected\n");
    return 1;
  }
  pd_last_error(msg, (int)sizeof msg, &len);
  if (len == 0 || strstr(msg, "precipdiff_init") == NULL) {
    fprintf(stderr, "unexpected message: %s\n", msg);
    return 1;
  }
  printf("precipdiff %d.%d.%d: %s\n", major, minor, patch, msg);
  return 0;
}
