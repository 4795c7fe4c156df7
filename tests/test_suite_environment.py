"""The test suite's own environment (tests/conftest.py): it writes nothing into the user's home, and property
tests fail fast by default. (A service a test names that is missing under CI: test_online_store.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from trellis.training import SQL_CACHE_ENV, sql_cache_dir


def test_caches_are_outside_the_home() -> None:
    """Rendered training-set SQL and matplotlib's font cache go to this run's scratch directory, not
    ~/.cache/trellis/sql and ~/.cache/matplotlib."""
    import matplotlib

    scratch = Path(tempfile.gettempdir()).resolve()
    home = Path.home().resolve()
    cache = sql_cache_dir()
    assert cache is not None and os.environ[SQL_CACHE_ENV] == str(cache)
    for folder in (cache, Path(matplotlib.get_cachedir()), Path(matplotlib.get_configdir())):
        assert folder.resolve().is_relative_to(scratch), folder
        assert not folder.resolve().is_relative_to(home), folder


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") not in {"", "ci"},
                    reason="HYPOTHESIS_PROFILE chose another profile")
def test_property_tests_report_without_shrinking_by_default() -> None:
    """The default ("ci") profile: no shrink phase (a bound bug failed the property modules after 3-10 minutes
    of shrinking), the same examples every run, and the blob to reproduce a failure."""
    assert Phase.shrink not in settings.default.phases
    assert Phase.generate in settings.default.phases
    assert settings.default.derandomize and settings.default.print_blob
    assert settings.get_profile("dev").phases == tuple(Phase)
