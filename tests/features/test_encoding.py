"""The column encoders produce exactly the bytes Feast and protobuf produce, value by value."""

from __future__ import annotations

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from features import encoding

INT64 = st.integers(-(2**63), 2**63 - 1)
# Mostly small ids (1-2 byte varints), with the full int64 range mixed in.
IDS = st.one_of(st.integers(0, 300), st.integers(0, 2**40), INT64)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(0, 20), st.integers(0, 9)), elements=IDS))
def test_int64_lists_match_protobuf(x):
    expected = [ValueProto(int64_list_val=Int64List(val=r.tolist())).SerializeToString() for r in x]
    assert encoding.int64_list_values(x) == expected


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(0, 20), st.integers(0, 9)), elements=IDS), st.data())
def test_ragged_int64_lists_from_a_padded_matrix_match_protobuf(x, data):
    keep = data.draw(hnp.arrays(bool, x.shape))
    expected = [ValueProto(int64_list_val=Int64List(val=r[k].tolist())).SerializeToString() for r, k in zip(x, keep)]
    assert encoding.int64_list_values(x, keep) == expected


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, st.integers(0, 30), elements=IDS))
def test_int64_scalars_match_protobuf(x):
    assert encoding.int64_values(x) == [ValueProto(int64_val=int(v)).SerializeToString() for v in x]


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 20), st.integers(0, 40)),
                  elements=st.floats(width=32, allow_nan=False)))
def test_float_lists_match_protobuf(x):
    expected = [ValueProto(float_list_val=FloatList(val=r.tolist())).SerializeToString() for r in x]
    assert encoding.float_list_values(x) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(INT64, st.integers(0, 1)), min_size=1, max_size=20),
       st.sampled_from(["item_id", "cluster_id", "zz_last"]))
def test_entity_keys_match_feast_serialization(rows, id_key):
    ids = np.array([r[0] for r in rows], np.int64)
    slots = np.array([r[1] for r in rows], np.int64)
    got = encoding.entity_keys({id_key: ids, "buffer_slot": slots})
    expected = [serialize_entity_key(encoding.entity_key_proto({id_key: int(i), "buffer_slot": int(s)}), 3)
                for i, s in zip(ids, slots)]
    assert got == expected


def test_single_join_key_matches_feast():
    ids = np.array([0, 1, -5, 2**62])
    expected = [serialize_entity_key(encoding.entity_key_proto({"user_id": int(i)}), 3) for i in ids]
    assert encoding.entity_keys({"user_id": ids}) == expected


def test_non_integer_ids_are_refused_by_name():
    with pytest.raises(TypeError, match="item_id"):
        encoding.entity_keys({"item_id": np.array([1.5])})
    with pytest.raises(ValueError, match="2-d"):
        encoding.int64_list_values(np.arange(3))


def test_a_changed_feast_key_layout_is_caught():
    cols = {"item_id": np.array([1, 2])}
    keys = encoding.entity_keys(cols)
    encoding.check_entity_keys(cols, keys)
    with pytest.raises(RuntimeError, match="no longer matches"):
        encoding.check_entity_keys(cols, [keys[0][:-1] + b"\x07", keys[1]])
