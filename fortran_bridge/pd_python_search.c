/*
 * pd_python_search.c -- which Python the embedded interpreter starts from.
 *
 * libprecipdiff embeds CPython (linked against libpythonX.Y) and needs the Python
 * environment where the precipdiff package is installed. The rule, first match wins
 * (docs/build.md, "Which Python the library starts"):
 *
 *   1. $PRECIPDIFF_PYTHON, when set and non-empty (taken as given);
 *   2. the build tree: a library loaded from its own build directory starts the
 *      Python it was configured with (-DPRECIPDIFF_PYTHON, the build venv);
 *   3. the install prefix: <prefix>/bin/python3.Y (then python3, python), i.e. the
 *      library was installed into the Python environment (venv or conda env) itself;
 *   4. $PATH: the first python3.Y / python3 / python whose environment holds a
 *      compatible precipdiff (an activated venv or conda env).
 *
 * An environment qualifies (3, 4) when <root>/lib/pythonX.Y exists (the libpython
 * the library is linked against) and one of its site directories holds precipdiff
 * with the library's major.minor version (a precipdiff-M.m.*.dist-info or a plain
 * precipdiff/ package), where <root> is the directory above the interpreter's bin/.
 * Nothing is executed to find out: the search only looks at files. When nothing
 * qualifies the caller gets every candidate and why it was rejected.
 *
 * Kept apart from precipdiff_capi.c (start-up, error codes) on purpose: this file
 * only answers "which executable".
 */
#define _GNU_SOURCE
#include "pd_python_search.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <patchlevel.h> /* PY_MAJOR_VERSION, PY_MINOR_VERSION of the linked libpython */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "precipdiff.h"

#ifndef PRECIPDIFF_DEFAULT_PYTHON
#error "PRECIPDIFF_DEFAULT_PYTHON must be defined at compile time (CMake does)"
#endif
#ifndef PRECIPDIFF_BUILD_LIBDIR
#define PRECIPDIFF_BUILD_LIBDIR ""
#endif
#ifndef PRECIPDIFF_INSTALL_LIBDIR
#define PRECIPDIFF_INSTALL_LIBDIR "lib"
#endif
#ifndef PRECIPDIFF_INSTALL_BINDIR
#define PRECIPDIFF_INSTALL_BINDIR "bin"
#endif

#define PD_STR2(x) #x
#define PD_STR(x) PD_STR2(x)
#define PD_PYVER PD_STR(PY_MAJOR_VERSION) "." PD_STR(PY_MINOR_VERSION)

/* Append to the "tried" list (always NUL-terminated, silently truncated). */
static void tried_add(char *tried, size_t len, const char *fmt, ...) {
  size_t used;
  va_list ap;
  if (tried == NULL || len == 0) return;
  used = strlen(tried);
  if (used + 3 >= len) return;
  if (used > 0) {
    memcpy(tried + used, "; ", 3);
    used += 2;
  }
  va_start(ap, fmt);
  vsnprintf(tried + used, len - used, fmt, ap);
  va_end(ap);
}

/* Format a path; 0 when it does not fit (the candidate is then skipped). */
static int fmt_path(char *out, size_t len, const char *fmt, ...) {
  int n;
  va_list ap;
  va_start(ap, fmt);
  n = vsnprintf(out, len, fmt, ap);
  va_end(ap);
  return n >= 0 && (size_t)n < len;
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Does directory `site` hold precipdiff compatible with this library?
 * 1: yes; 0: no precipdiff; -1: a precipdiff of another version (version in `found`). */
static int site_has_precipdiff(const char *site, char *found, size_t found_len) {
  char want[64];
  DIR *d;
  struct dirent *e;
  int result = 0;
  char path[PATH_MAX];
  snprintf(want, sizeof want, "precipdiff-%d.%d.", PD_VERSION_MAJOR, PD_VERSION_MINOR);
  d = opendir(site);
  if (d == NULL) return 0;
  while ((e = readdir(d)) != NULL) {
    const char *n = e->d_name;
    size_t ln = strlen(n);
    if (strcmp(n, "precipdiff") == 0) {
      if (fmt_path(path, sizeof path, "%s/precipdiff/__init__.py", site) &&
          access(path, R_OK) == 0 && result == 0)
        result = 1;
    } else if (strncmp(n, "precipdiff-", 11) == 0 && ln > 11 &&
               ln > strlen(".dist-info") && strcmp(n + ln - 10, ".dist-info") == 0) {
      if (strncmp(n, want, strlen(want)) == 0) {
        result = 1;
        break;
      }
      result = -1;
      snprintf(found, found_len, "%.*s", (int)(ln - 21), n + 11);
    }
  }
  closedir(d);
  return result;
}

/* Is `exe` a Python X.Y whose environment holds precipdiff? On rejection, say why. */
static int usable(const char *exe, char *why, size_t why_len) {
  char root[PATH_MAX], lib[PATH_MAX], site[PATH_MAX], other[64] = "";
  const char *sites[] = {"lib/python" PD_PYVER "/site-packages", "lib/python" PD_PYVER "/dist-packages",
                         "local/lib/python" PD_PYVER "/dist-packages", "lib/python3/dist-packages"};
  char *slash;
  size_t i;
  int wrong_version = 0;
  if (access(exe, X_OK) != 0) {
    snprintf(why, why_len, "not found");
    return 0;
  }
  /* <root>/bin/python -> <root>; symlinks are not resolved (a venv's python is one). */
  snprintf(root, sizeof root, "%s", exe);
  for (i = 0; i < 2; i++) {
    slash = strrchr(root, '/');
    if (slash == NULL) {
      snprintf(why, why_len, "not an absolute path");
      return 0;
    }
    *slash = '\0';
  }
  /* root "" is "/": the paths below start with "/lib/..." */
  if (!fmt_path(lib, sizeof lib, "%s/lib/python" PD_PYVER, root) || !is_dir(lib)) {
    snprintf(why, why_len, "not a Python " PD_PYVER " environment (no %s)", lib);
    return 0;
  }
  for (i = 0; i < sizeof sites / sizeof sites[0]; i++) {
    int r;
    if (!fmt_path(site, sizeof site, "%s/%s", root, sites[i])) continue;
    r = site_has_precipdiff(site, other, sizeof other);
    if (r == 1) return 1;
    if (r == -1) wrong_version = 1;
  }
  if (wrong_version)
    snprintf(why, why_len, "has precipdiff %s, this library is %d.%d.%d", other,
             PD_VERSION_MAJOR, PD_VERSION_MINOR, PD_VERSION_PATCH);
  else
    snprintf(why, why_len, "no precipdiff in %s/lib/python" PD_PYVER "/site-packages", root);
  return 0;
}

/* Any object of this library: dladdr() on it names the library's file. */
static const char g_anchor = 0;

/* Directory of this shared library (symlinks resolved), or "" if unknown. */
static void library_dir(char *dir, size_t len) {
  Dl_info info;
  char real[PATH_MAX];
  char *slash;
  dir[0] = '\0';
  if (dladdr(&g_anchor, &info) == 0 || info.dli_fname == NULL) return;
  if (realpath(info.dli_fname, real) == NULL) return;
  slash = strrchr(real, '/');
  if (slash == NULL) return;
  *slash = '\0';
  snprintf(dir, len, "%s", real);
}

/* The install prefix: the library directory minus the components of the libdir. */
static int install_prefix(const char *libdir, char *prefix, size_t len) {
  const char *rel = PRECIPDIFF_INSTALL_LIBDIR;
  const char *p;
  int depth = 1;
  char *slash;
  if (rel[0] == '/' || libdir[0] == '\0') return 0; /* absolute libdir: no prefix rule */
  for (p = rel; *p; p++)
    if (*p == '/' && p[1] != '\0') depth++;
  snprintf(prefix, len, "%s", libdir);
  while (depth-- > 0) {
    slash = strrchr(prefix, '/');
    if (slash == NULL) return 0;
    *slash = '\0';
  }
  if (prefix[0] == '\0') snprintf(prefix, len, "/");
  return 1;
}

static const char *const g_names[] = {"python" PD_PYVER, "python3", "python"};

int pd_find_python(char *exe, size_t exe_len, char *source, size_t source_len, char *tried,
                   size_t tried_len) {
  const char *env = getenv("PRECIPDIFF_PYTHON");
  char libdir[PATH_MAX], build[PATH_MAX], prefix[PATH_MAX], cand[PATH_MAX], why[PATH_MAX + 128];
  const char *path;
  size_t i;
  int listed = 0;

  if (tried != NULL && tried_len > 0) tried[0] = '\0';
  if (env != NULL && env[0] != '\0') {
    snprintf(exe, exe_len, "%s", env);
    snprintf(source, source_len, "environment variable PRECIPDIFF_PYTHON");
    return 0;
  }
  tried_add(tried, tried_len, "PRECIPDIFF_PYTHON: unset");

  library_dir(libdir, sizeof libdir);
  if (libdir[0] != '\0' && PRECIPDIFF_BUILD_LIBDIR[0] != '\0' &&
      realpath(PRECIPDIFF_BUILD_LIBDIR, build) != NULL && strcmp(libdir, build) == 0) {
    snprintf(exe, exe_len, "%s", PRECIPDIFF_DEFAULT_PYTHON);
    snprintf(source, source_len, "build tree: the Python configured at build time");
    return 0;
  }

  if (install_prefix(libdir, prefix, sizeof prefix)) {
    for (i = 0; i < sizeof g_names / sizeof g_names[0]; i++) {
      if (!fmt_path(cand, sizeof cand, "%s/%s/%s", prefix, PRECIPDIFF_INSTALL_BINDIR,
                    g_names[i]))
        continue;
      if (usable(cand, why, sizeof why)) {
        snprintf(exe, exe_len, "%s", cand);
        snprintf(source, source_len, "install prefix %s", prefix);
        return 0;
      }
      if (i == 0 || access(cand, F_OK) == 0) tried_add(tried, tried_len, "%s: %s", cand, why);
    }
  } else {
    tried_add(tried, tried_len, "install prefix: unknown (library at '%s')", libdir);
  }

  path = getenv("PATH");
  if (path != NULL) {
    const char *p = path;
    while (*p) {
      const char *end = strchr(p, ':');
      size_t n = end ? (size_t)(end - p) : strlen(p);
      if (n > 0 && n < PATH_MAX - 16 && p[0] == '/') {
        for (i = 0; i < sizeof g_names / sizeof g_names[0]; i++) {
          if (!fmt_path(cand, sizeof cand, "%.*s/%s", (int)n, p, g_names[i])) continue;
          if (access(cand, X_OK) != 0) continue;
          if (usable(cand, why, sizeof why)) {
            snprintf(exe, exe_len, "%s", cand);
            snprintf(source, source_len, "PATH");
            return 0;
          }
          tried_add(tried, tried_len, "%s (PATH): %s", cand, why);
          listed = 1;
        }
      }
      if (end == NULL) break;
      p = end + 1;
    }
  }
  if (!listed) tried_add(tried, tried_len, "PATH: no python" PD_PYVER ", python3 or python");
  return -1;
}
