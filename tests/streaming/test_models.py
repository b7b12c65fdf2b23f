import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.models import (MAX_ID, SCHEMA_VERSION, DeadLetter, EngagementEvent, InvalidEvent, decode_values,
                              encode_event)

VALID = dict(event_id="e1", user_id=7, item_id=42, timestamp=1_600_000_000.5, event_type="click", weight=2.0)


def test_round_trip_through_the_wire_format():
    event = EngagementEvent(**VALID)
    assert EngagementEvent.from_wire(event.to_wire()) == event
    assert json.loads(event.to_wire()) == {"schema_version": SCHEMA_VERSION, **VALID}  # no faust metadata
    assert event.key == b"7"


def test_optional_fields_default_and_other_formatting_is_accepted():
    raw = json.dumps({"timestamp": 5, "item_id": 1, "user_id": 0, "event_id": "x"}, indent=2).encode()
    event = EngagementEvent.from_wire(raw)
    assert (event.event_type, event.weight, event.timestamp) == ("view", 1.0, 5.0)


MALFORMED = [
    (b"", "empty payload"),
    (b"x" * 5000, "oversized payload"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"event_id": "e", "user_id": 1', "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"user_id": 1, "item_id": 2, "timestamp": 3}', "missing field 'event_id'"),
    (b'{"event_id": "e", "user_id": 1, "item_id": 2, "timestamp": 3, "color": 1}', "unknown field 'color'"),
    (b'{"event_id": "e", "user_id": "1", "item_id": 2, "timestamp": 3}', "field 'user_id': expected an integer"),
    (b'{"event_id": "e", "user_id": true, "item_id": 2, "timestamp": 3}', "field 'user_id': expected an integer"),
    (b'{"event_id": "e", "user_id": 1.0, "item_id": 2, "timestamp": 3}', "field 'user_id': expected an integer"),
    (b'{"event_id": "e", "user_id": 1, "item_id": -2, "timestamp": 3}', "field 'item_id': -2 is outside"),
    (b'{"event_id": "e", "user_id": 1, "item_id": 99999999999999, "timestamp": 3}', "field 'item_id'"),
    (b'{"event_id": "e", "user_id": 1, "item_id": 2, "timestamp": NaN}', "NaN is not allowed"),
    (b'{"event_id": "e", "user_id": 1, "item_id": 2, "timestamp": 1e400}', "field 'timestamp'"),
    (b'{"event_id": "", "user_id": 1, "item_id": 2, "timestamp": 3}', "field 'event_id'"),
    (b'{"event_id": "e", "user_id": 1, "item_id": 2, "timestamp": 3, "weight": 0}', "field 'weight'"),
    (b"[" * 3000, "invalid JSON"),
    (b'{"schema_version": 2, "event_id": "e", "user_id": 1, "item_id": 2, "timestamp": 3}',
     "unsupported schema_version 2"),
    (b'{"schema_version": "1", "event_id": "e", "user_id": 1, "item_id": 2, "timestamp": 3}',
     "field 'schema_version'"),
]


@pytest.mark.parametrize("raw, reason", MALFORMED)
def test_malformed_messages_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(")):
        EngagementEvent.from_wire(raw)
    cols, rejects = decode_values([raw])
    assert len(cols) == 0 and rejects[0][0] == 0 and reason in rejects[0][1]


def test_a_message_split_across_two_records_does_not_become_valid():
    # Joined with a comma these three would parse as three valid events; alone none is valid.
    a = encode_event("a", 1, 2, 3.0) + b"," + encode_event("b", 1, 2, 3.0)
    b = b'{"event_id":"x}'
    c = b'{y","user_id":1,"item_id":2,"timestamp":3.0,"event_type":"view","weight":1.0}'
    cols, rejects = decode_values([a, b, c])
    assert len(cols) == 0 and [i for i, _ in rejects] == [0, 1, 2]


def test_a_record_holding_two_canonical_lines_is_rejected_and_its_neighbours_kept():
    # The whole-batch path matches canonical messages line by line: a newline inside a record
    # must not let it pass as two events.
    two = encode_event("a", 1, 2, 3.0) + b"\n" + encode_event("b", 4, 5, 6.0)
    cols, rejects = decode_values([encode_event("c", 7, 8, 9.0), two, encode_event("d", 10, 11, 12.0)])
    assert cols.index.tolist() == [0, 2] and cols.user_ids.tolist() == [7, 10] and [i for i, _ in rejects] == [1]
    cols, rejects = decode_values([encode_event("c", 7, 8, 9.5), encode_event("d", 10, 11, 12.25)])
    assert not rejects and cols.timestamps.tolist() == [9.5, 12.25] and cols.item_ids.tolist() == [8, 11]


events = st.fixed_dictionaries({
    "event_id": st.text(min_size=1, max_size=10),
    "user_id": st.integers(-5, MAX_ID + 5),
    "item_id": st.one_of(st.integers(0, 50), st.integers(MAX_ID - 2, MAX_ID + 2)),
    "timestamp": st.one_of(st.floats(-1, 2e10, allow_nan=False), st.integers(0, 2**35)),
    "event_type": st.sampled_from(["view", "click", "", "é"]),
    "weight": st.one_of(st.floats(-1, 2e6, allow_nan=False, allow_infinity=False), st.just(1.0)),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(events, st.sampled_from(["canonical", "json", "spaced"])), min_size=1, max_size=30))
def test_batch_decoder_agrees_with_the_record_on_every_message(batch):
    raws = []
    for ev, style in batch:
        if style == "canonical":
            raws.append(encode_event(ev["event_id"], ev["user_id"], ev["item_id"], ev["timestamp"],
                                     ev["event_type"], ev["weight"]))
        else:
            raws.append(json.dumps(ev, separators=(", ", ": ") if style == "spaced" else (",", ":")).encode())
    cols, rejects = decode_values(raws)
    rejected = dict(rejects)
    k = 0
    for i, raw in enumerate(raws):
        try:
            want = EngagementEvent.from_wire(raw)
        except InvalidEvent as e:
            assert rejected.get(i) == str(e)
            continue
        assert i not in rejected
        assert cols.index[k] == i
        assert (cols.user_ids[k], cols.item_ids[k]) == (want.user_id, want.item_id)
        assert cols.timestamps[k] == want.timestamp and cols.weights[k] == want.weight
        k += 1
    assert k == len(cols)
    assert np.all(np.diff(cols.index) > 0)


def test_missing_timestamp_defaults_to_the_record_time_and_an_old_event_without_version_is_v1():
    raw = b'{"event_id": "e", "user_id": 1, "item_id": 2}'
    assert EngagementEvent.from_wire(raw, record_time=1_700_000_000.25).timestamp == 1_700_000_000.25
    cols, rejects = decode_values([raw, raw], record_times=[1_700_000_000.25, -0.001])
    assert cols.timestamps.tolist() == [1_700_000_000.25] and rejects[0][0] == 1
    old = b'{"event_id":"a","user_id":1,"item_id":2,"timestamp":3.0,"event_type":"view","weight":1.0}'
    cols, rejects = decode_values([old])
    assert not rejects and cols.item_ids.tolist() == [2]


SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "streaming" / "event.schema.json").read_text())


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _schema_accepts(raw: bytes) -> bool:
    try:
        obj = json.loads(raw, parse_constant=_not_json)  # strict JSON: no NaN / Infinity
    except (ValueError, RecursionError):
        return False
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(obj)


def test_json_schema_accepts_what_encode_event_produces():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for raw in (encode_event("e1", 0, MAX_ID, 0.0), encode_event("x" * 128, 7, 42, 2.0**34, "c" * 32, 1e6),
                EngagementEvent(**VALID).to_wire(), b'{"event_id": "e", "user_id": 1, "item_id": 2}'):
        assert _schema_accepts(raw), raw


@pytest.mark.parametrize("raw, reason", MALFORMED)
def test_json_schema_rejects_what_the_parser_rejects(raw, reason):
    if b'"user_id": 1.0' in raw:
        pytest.skip("JSON Schema counts a whole-number float as an integer; only the parser rejects it")
    assert not _schema_accepts(raw)


def test_a_dead_letter_keeps_the_head_of_an_oversized_value_with_its_size_and_hash():
    value = bytes(range(256)) * 5000
    d = DeadLetter.of("t", 3, 17, "oversized payload", b"k", value, max_bytes=1000)
    assert d.truncated and d.value == value[:1000] and d.size == len(value)
    assert d.sha256 == hashlib.sha256(value).hexdigest() and d.dlq_key == b"t/3/17"
    assert DeadLetter.from_message(d.value, d.headers()) == d
    empty = DeadLetter.of("t", 0, 1, "empty payload", None, None, max_bytes=1000)
    assert DeadLetter.from_message(b"", empty.headers()) == empty and not empty.truncated
