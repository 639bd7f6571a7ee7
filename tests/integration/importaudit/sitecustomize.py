"""Loaded by every Python process started with this folder on ``PYTHONPATH`` and
``VIGIL_IMPORT_AUDIT`` set (the lander, the scorer, their workers): the process runs as
if only the lean image's requirements were installed.

A top-level import of a module that an installed distribution outside
``$VIGIL_IMPORT_ALLOWED`` (``deploy/requirements-stream.txt``) provides raises
``ModuleNotFoundError``, as it would in the image: an optional import falls back, a
needed one fails the process. At exit the process writes what it imported and what was
refused to ``$VIGIL_IMPORT_AUDIT/<pid>.json``.
"""

import atexit
import json
import os
import re
import sys
from importlib.metadata import packages_distributions

_OUT = os.environ.get("VIGIL_IMPORT_AUDIT")
_ALLOWED = os.environ.get("VIGIL_IMPORT_ALLOWED")


IMAGE_BASE = {"pip", "setuptools", "wheel", "vigil"}  # the base image's, and the code itself


def canonical(name):
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_in_image(requirements_file):
    """The distributions the image installs: the file's pins and :data:`IMAGE_BASE`."""
    with open(requirements_file) as f:
        lines = [ln.split("==")[0] for ln in f.read().splitlines() if ln and ln[0] != "#"]
    return {canonical(n) for n in lines} | IMAGE_BASE


class _StreamImage:
    """A meta-path finder that refuses modules the image does not install."""

    def __init__(self, allowed_file):
        self.allowed = installed_in_image(allowed_file)
        self.owners = packages_distributions()
        self.refused = set()

    def find_spec(self, name, path=None, target=None):
        if "." in name:
            return
        dists = self.owners.get(name)
        if not dists or any(canonical(d) in self.allowed for d in dists):
            return  # the standard library, Vigil's own, or installed in the image
        self.refused.add(name)
        raise ModuleNotFoundError(f"No module named {name!r} (not in the stream image)", name=name)


if _OUT and _ALLOWED:
    _finder = _StreamImage(_ALLOWED)
    sys.meta_path.insert(0, _finder)

    def _dump():
        tops = sorted({name.split(".")[0] for name in list(sys.modules)})
        with open(os.path.join(_OUT, f"{os.getpid()}.json"), "w") as f:
            json.dump({"imported": tops, "refused": sorted(_finder.refused)}, f)

    atexit.register(_dump)
