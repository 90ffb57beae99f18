/* pd_python_search.h -- internal: which Python the embedded interpreter starts from
 * (the rule is documented in pd_python_search.c and docs/build.md). */
#ifndef PD_PYTHON_SEARCH_H
#define PD_PYTHON_SEARCH_H

#include <stddef.h>

/* Find the interpreter. On success (0) `exe` holds its path and `source` says which
 * rule chose it. On failure (-1) `tried` lists every candidate and why it was
 * rejected. All buffers are always NUL-terminated (truncated if too small). */
int pd_find_python(char *exe, size_t exe_len, char *source, size_t source_len, char *tried,
                   size_t tried_len);

#endif
