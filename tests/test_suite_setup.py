"""The test suite's own machinery: a parallel run (EDGESLM_TEST_WORKERS=2 bash scripts/test.sh) keeps
the tests that share an expensive fixture on one worker."""

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
