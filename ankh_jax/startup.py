"""A quiet start: no libtpu or TensorFlow start-up noise on a machine that has neither a TPU nor a GPU for them.

``make install`` installs libtpu (``[tpu]``) so that ``plan_memory --target=tpu:...`` can compile for a TPU
topology on any machine. On a machine without a TPU, jax would still try the TPU backend at its first device query,
and libtpu prints about six lines ("could not determine TPU accelerator type", ``E0000 ... TPU_WORKER_HOSTNAMES``)
before the command's own output; TensorFlow's first import prints "Could not find cuda drivers". A user reads that
as a crash, and the promised one-line error becomes line ten. :func:`quiet_startup`, run when ``ankh_jax`` is
imported (it imports neither jax nor TensorFlow):

* when no TPU chip is on the PCI bus, no TPU environment is set, no other accelerator plugin for jax is installed
  and the user has not chosen ``JAX_PLATFORMS``, sets ``JAX_PLATFORMS=cpu`` (the ahead-of-time compile for a TPU
  topology does not use the TPU backend: it loads libtpu itself and still works);
* wraps the first import of TensorFlow so that the known start-up lines of its native libraries are dropped; every
  other line it prints is passed on, in order.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
import tempfile

_GOOGLE_PCI_VENDOR = "0x1ae0"   # TPU chips (what jax's own hardware_utils looks for)
_TPU_ENVIRONMENT = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "JAX_FORCE_TPU_INIT")
# Lines TensorFlow's native libraries print while loading on a machine without a GPU: nothing a user can act on.
NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
         "cudart_stub.cc", "Could not find cuda drivers on your machine", "Unable to register cuDNN factory",
         "Unable to register cuFFT factory", "Unable to register cuBLAS factory", "computation_placer.cc",
         "TF-TRT Warning: Could not find TensorRT", "oneDNN custom operations are on",
         "This TensorFlow binary is optimized to use available CPU instructions",
         "To enable the following instructions:", "cuda_executor.cc", "gpu_device.cc",
         "failed call to cuInit")
_QUIET_MODULES = ("tensorflow", "tensorflow_text")


def has_tpu() -> bool:
    """A TPU chip on this machine's PCI bus, or a TPU environment set up by the user or the platform."""
    if any(os.environ.get(name) for name in _TPU_ENVIRONMENT):
        return True
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _other_jax_plugins() -> bool:
    """jax plugins (CUDA, ROCm, ...) installed: their platforms must stay reachable."""
    try:
        return bool(importlib.metadata.entry_points(group="jax_plugins"))
    except Exception:  # noqa: BLE001 - a broken distribution's metadata must not stop a command
        return True


def choose_platforms() -> None:
    """``JAX_PLATFORMS=cpu`` when jax could only find a CPU anyway (see the module docstring)."""
    if "JAX_PLATFORMS" in os.environ or has_tpu() or _other_jax_plugins():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported before ankh_jax: its config has already read the environment
        sys.modules["jax"].config.update("jax_platforms", "cpu")


class _FilteredStderr:
    """Sends file descriptor 2 to a temporary file for the duration, then writes back the lines not in NOISE."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile()
        os.dup2(self._capture.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._capture.seek(0)
        kept = [line for line in self._capture.read().splitlines(keepends=True)
                if not any(noise.encode() in line for noise in NOISE)]
        self._capture.close()
        if kept:
            sys.stderr.flush()
            os.write(2, b"".join(kept))
        return False


class _QuietLoader:
    """Runs the wrapped loader's ``exec_module`` inside :class:`_FilteredStderr`; everything else is the loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader  # the module never sees the wrapper
        with _FilteredStderr():
            self._loader.exec_module(module)
            if module.__name__ == "tensorflow":
                # TensorFlow looks for a GPU at its first device query ("failed call to cuInit" on a machine without
                # one), not at import: query now, inside the filter. Listing physical devices leaves them
                # configurable (tf.config.set_visible_devices still works afterwards).
                module.config.list_physical_devices()


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`_QUIET_MODULES` with the ordinary finders and hands back their specs with a quiet loader."""

    def find_spec(self, name, path, target=None):
        if name not in _QUIET_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_native_imports() -> None:
    if not any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


def quiet_startup() -> None:
    choose_platforms()
    quiet_native_imports()
