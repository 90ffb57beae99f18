"""Model bundle: safetensors weights plus a JSON manifest, validated at load.

A bundle is a directory::

    BUNDLE/
      manifest.json            everything needed to rebuild and use the model
      regression.safetensors   regression UNet weights
      denoiser.safetensors     diffusion denoiser weights (raw UNet inside EDMPrecond)
      statics.safetensors      optional static fields (land-sea mask, orography)
      compiled/*.pt2           optional AOTInductor packages (``precipdiff export``)

The manifest (:class:`Manifest`) records the format version, the predictor
variables (name, level, units, valid range), the coarse and fine grid
coordinates, normalisation statistics, the precipitation transform, the
condition-noise level ``sigma_c``, the sampler defaults, both network
architectures, a ``bias_correction`` slot for QDM tables, training provenance,
and the sha256 of every weight file. :func:`read_manifest` validates it without
touching the weights; :func:`load_bundle` also verifies the hashes and loads the
weights with ``strict=True``. Weights are never pickled.

Format history
--------------
* version 1: flat manifest (``predictors``/``levels``/``units`` lists, ``norm``,
  ``eps``, ``networks``, ``sha256``); migrated on read by :func:`migrate_manifest`.
* version 2 (current): the layout of :class:`Manifest`.

Modules: :mod:`~precipdiff.bundle.manifest` (format, validation, migration),
:mod:`~precipdiff.bundle.loader` (hash checks, strict weight loading),
:mod:`~precipdiff.bundle.compiled` (AOTInductor packages matching the device),
:mod:`~precipdiff.bundle.writer` (``save_bundle``, used offline). The names below
are the public API and stay importable from ``precipdiff.bundle``.
"""

from __future__ import annotations

from precipdiff.bundle.compiled import load_compiled
from precipdiff.bundle.loader import Bundle, load_bundle, static_field_arrays, verify_file
from precipdiff.bundle.manifest import (
    COMPILED_DIR,
    DENOISER_FILE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    REGRESSION_FILE,
    STATICS_FILE,
    Manifest,
    bundle_hash,
    default_sampler,
    migrate_manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from precipdiff.bundle.registry import find_bundle, shipped_bundles
from precipdiff.bundle.writer import default_provenance, manifest_from_networks, save_bundle
from precipdiff.statics import COMPUTED_STATICS

__all__ = [
    "COMPILED_DIR",
    "COMPUTED_STATICS",
    "DENOISER_FILE",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "REGRESSION_FILE",
    "STATICS_FILE",
    "Bundle",
    "Manifest",
    "bundle_hash",
    "default_provenance",
    "default_sampler",
    "find_bundle",
    "load_bundle",
    "load_compiled",
    "manifest_from_networks",
    "migrate_manifest",
    "read_manifest",
    "save_bundle",
    "sha256_file",
    "shipped_bundles",
    "static_field_arrays",
    "verify_file",
    "write_manifest",
]
