"""One reading of yes/no backend options (edgeslm/options.py) for every exporter and engine."""

import pytest

from edgeslm.errors import ExportError
from edgeslm.options import flag


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("Yes", True), ("on", True), (" false ", False),
                                             ("0", False), ("no", False), ("OFF", False), (True, True), (0, False)])
def test_flag_reads_the_usual_spellings(value, expected):
    assert flag(value) is expected


def test_a_typo_is_refused_naming_the_option():
    with pytest.raises(ExportError, match="option stateful='ture': expected one of"):
        flag("ture", "stateful", ExportError)
