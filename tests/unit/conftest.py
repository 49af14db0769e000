"""Unit-tier settings: Hypothesis keeps no example database on disk and has no deadline.

The unit tier does no I/O, so Hypothesis must not write ``.hypothesis/`` into the
working tree; and wall-clock deadlines make property tests flaky on a loaded CI box.
Set ``HYPOTHESIS_PROFILE`` to pick another registered profile.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("unit", database=None, deadline=None)
settings.register_profile("unit-thorough", database=None, deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))
