"""Property: the msgspec fast path never changes a verdict, it only takes the common case.

For every mutation the fuzz test draws (any field of a telemetry message replaced by arbitrary
JSON, huge integers, NaN/1e999, NUL, lone surrogates, deep nesting, or deleted), the fast path
either declines (None) or returns exactly the message the full field-by-field checks return:
same seq, ts and store columns. It never accepts what the full checks refuse.
"""

from __future__ import annotations

import json
import random
import time

import pytest

pytest.importorskip("hypothesis", reason="hypothesis not installed (pip install 'edgeslm[test]')")
pytest.importorskip("msgspec", reason="msgspec not installed (pip install 'edgeslm[fleet]')")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeslm.telemetry import fastpath, schema, topics  # noqa: E402
from edgeslm.telemetry.simulate import _resource, fake_metrics  # noqa: E402

from .test_fuzz import _mutation, field_paths, mutate  # noqa: E402

TOPIC = "edgeslm/v1/fp/dev-fuzz/telemetry"
BODY = schema.telemetry_body("fp", "dev-fuzz", 7, time.time(), 10.0, fake_metrics(random.Random(1), 0.5),
                             _resource(1), {"buffered": 0, "dropped": 0, "rejected": 0})


def full_checks(payload: bytes):
    saved, schema._fast = schema._fast, None
    try:
        return schema.parse(TOPIC, payload)
    except schema.MessageError as exc:
        return exc
    finally:
        schema._fast = saved


def same(fast, slow) -> None:
    assert isinstance(slow, schema.Message), f"fast path accepted what the checks refuse: {slow}"
    assert (fast.seq, fast.ts, fast.columns, fast.text, fast.body) == (slow.seq, slow.ts, slow.columns, slow.text,
                                                                       slow.body)


def test_the_common_message_takes_the_fast_path():
    payload = schema.encode(BODY)
    fast = fastpath.telemetry(topics.parse(TOPIC), payload, 1.0)
    assert fast is not None
    same(fast, full_checks(payload))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(field_paths(BODY)), _mutation, st.booleans())
def test_fast_path_verdicts_equal_the_full_checks(path, mutation, ascii_only):
    payload = mutate(BODY, path, mutation)
    if not ascii_only and mutation[0] != "raw":  # raw UTF-8 text too (no \\u escapes), where json can
        try:
            payload = json.dumps(json.loads(payload), ensure_ascii=False).encode("utf-8", "surrogatepass")
        except ValueError:
            pass
    slow = full_checks(payload)
    fast = fastpath.telemetry(topics.parse(TOPIC), payload, 0.0)
    if fast is not None:
        same(fast, slow)
