"""The JAX platform a job should default to, decided before JAX is imported.

With libtpu installed (it is in the test extras, for the compile job's TPU topologies) JAX probes
for a TPU on every start, and on a host without one libtpu prints a page of warnings to stderr, under
the one line a user error should be. On such a host (no TPU, no NVIDIA GPU, JAX_PLATFORMS unset) the
jobs default JAX_PLATFORMS to cpu. A TPU host, a GPU host or an explicit JAX_PLATFORMS is left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips appear on the PCI bus with Google's vendor id (as JAX checks)


def _has_tpu() -> bool:
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file, encoding="ascii") as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def default_to_cpu_without_accelerator() -> None:
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if _has_tpu() or os.path.exists("/dev/nvidiactl"):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # imported already (its flags read the environment then): backends start lazily
    sys.modules["jax"].config.update("jax_platforms", "cpu")
