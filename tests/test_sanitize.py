"""The kernels under AddressSanitizer and UBSan: ``.ci/sanitize`` builds the extension with
``-fsanitize=address,undefined`` and runs the kernel, LSH and optimizer tests against that
build (a heap overflow, a use after free or undefined behaviour in a kernel fails them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "sanitize")


def _runtime(name: str) -> str | None:
  """The compiler's sanitizer runtime library, or None where it has none."""
  gcc = shutil.which("gcc")
  if gcc is None:
    return None
  path = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True,
                        text=True).stdout.strip()
  return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="not a source checkout")
@pytest.mark.skipif(_runtime("libasan.so") is None or _runtime("libubsan.so") is None,
                    reason="gcc has no ASan/UBSan runtime here")
def test_kernel_tests_pass_under_asan_and_ubsan():
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
  env["JSLIDE_PYTHON"] = sys.executable
  run = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
  out = run.stdout + run.stderr
  assert run.returncode == 0, out[-6000:]
  assert "passed" in run.stdout and "ERROR: AddressSanitizer" not in out, out[-6000:]
  assert "runtime error:" not in out, out[-6000:]  # UBSan reports and goes on
