"""Where the tests find SKAB (GPL: never copied into the repo) and how they skip without it.

SKAB lives beside the repository, at ../shared/data/skab (the folder holding `data/`), as
`latentwatch evaluate skab` expects; LATENTWATCH_TEST_SKAB names another folder. A test that
needs it is marked `needs_skab`: without the data it is skipped with a reason containing
"SKAB data not present", the one data skip CI allows (tests/conftest.py ALLOWED_IN_CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKAB = Path(os.environ.get("LATENTWATCH_TEST_SKAB") or REPO.parent / "shared" / "data" / "skab")
SKAB_DATA = SKAB / "data"

needs_skab = pytest.mark.skipif(
    not (SKAB_DATA / "valve1").is_dir(),
    reason=f"SKAB data not present at {SKAB} (get it from https://github.com/waico/SKAB: see the README)")
