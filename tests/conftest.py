import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Token files the language-model tests write go to a scratch cache, not the user's.
os.environ.setdefault("JSLIDE_CACHE", tempfile.mkdtemp(prefix="jslide-test-cache-"))

settings.register_profile(
    "jslide", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("jslide")


@pytest.fixture
def rng():
  return np.random.default_rng(1234)
