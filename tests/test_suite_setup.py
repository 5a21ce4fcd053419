"""The test suite's own machinery: a parallel run (EDGESLM_TEST_WORKERS=2 bash scripts/test.sh) keeps
the tests that share an expensive fixture on one worker; Ctrl-C means KeyboardInterrupt however the
suite was started."""

import signal
import subprocess
import sys

import pytest


@pytest.mark.xdist_group("probe")
def test_xdist_groups_reach_the_scheduler(request):
    """Under ``--dist loadgroup`` pytest-xdist appends ``@group`` to a grouped test's node id, and its
    scheduler keeps each group on one worker. pytest 9.2 stopped reading the attribute xdist writes,
    which drops every group without a word, so each worker rebuilt the SmolLM2 exports: this fails then."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a pytest-xdist worker with --dist loadgroup "
                    "(EDGESLM_TEST_WORKERS=2 bash scripts/test.sh runs one)")
    assert request.node.nodeid.endswith("@probe")


def test_shared_fixtures_put_their_tests_in_one_group(request):
    """Every test that uses a fixture of the root conftest's SHARED_FIXTURES carries its xdist group."""
    shared = next((p.SHARED_FIXTURES for p in request.config.pluginmanager.get_plugins()
                   if getattr(p, "SHARED_FIXTURES", None)), None)  # the root conftest.py, however it was imported
    assert shared, "the root conftest.py defines no SHARED_FIXTURES"
    items = [i for i in request.session.items if set(shared) & set(getattr(i, "fixturenames", ()))]
    if not items:
        pytest.skip("no test using a shared fixture was collected in this run")
    for item in items:
        groups = [m.args[0] for m in item.iter_markers("xdist_group")]
        assert groups and groups[0] in shared, item.nodeid


def test_sigint_is_not_ignored_here_nor_in_children():
    """Started in the background by a shell without job control, the suite inherits SIGINT ignored;
    the root conftest restores it, for this process and the processes it starts (the Ctrl-C tests
    need both). Fails when the suite runs with SIGINT ignored and that hook is gone."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    child = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
                           capture_output=True, text=True, check=True)
    assert "default_int_handler" in child.stdout, child.stdout
