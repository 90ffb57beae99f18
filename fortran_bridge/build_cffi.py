"""Generate the cffi embedding C source of libprecipdiff.

Run at build time by CMake with the configured Python::

    python build_cffi.py OUTPUT.c

The generated C defines the ``pdpy_*`` functions declared in ``pd_embed_api.h``.
On first use they run the init code below inside the interpreter that
``precipdiff_capi.c`` has already started with ``PyConfig``; the init code imports
:mod:`precipdiff.server.capi`, which installs the ``def_extern`` implementations.
If that import fails, the init code installs two fallbacks so the C layer can
report the ``ImportError`` text instead of cffi's silent zero return.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

MODULE = "_precipdiff_bridge"

INIT_CODE = """
import sys
from _precipdiff_bridge import ffi

try:
    from precipdiff.server import capi as _capi

    _capi.install(ffi)
except BaseException as _exc:  # noqa: BLE001 - reported through pdpy_import_error
    _msg = (
        "the embedded Python (executable %s, prefix %s) cannot import "
        "precipdiff.server.capi: %s: %s"
        % (sys.executable, sys.prefix, type(_exc).__name__, _exc)
    )

    @ffi.def_extern(error=0)
    def pdpy_ready():
        return 0

    @ffi.def_extern(error=-1)
    def pdpy_import_error(buf, buflen):
        data = _msg.encode("utf-8", "replace")[: max(buflen - 1, 0)]
        ffi.memmove(buf, data, len(data))
        buf[len(data)] = b"\\0"
        return len(data)
"""


def main(argv: list[str]) -> int:
    """Write the generated C file named on the command line."""
    if len(argv) != 2:
        print("usage: build_cffi.py OUTPUT.c", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    api = (here / "pd_embed_api.h").read_text()
    ffibuilder = cffi.FFI()
    ffibuilder.embedding_api(api)
    ffibuilder.set_source(MODULE, "")
    ffibuilder.embedding_init_code(INIT_CODE)
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    ffibuilder.emit_c_code(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
