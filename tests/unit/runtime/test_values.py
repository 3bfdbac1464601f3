"""Table values: MessagePack, compressed when large, and what earlier releases wrote in JSON still read."""
import json

import ormsgpack
import pytest

from streams.runtime.values import decode, encode


@pytest.mark.parametrize("value", [
    {"visitor": "V1", "pages": [1, 2, 3]}, [[1, "v1"]], [], {}, 0, 120, -3, 1796178994736, "x", 2.5, True, None,
])
def test_every_value_a_table_holds_reads_back_as_written(value):
    # Given a value of any kind a handler stores, When it is encoded and decoded, Then it is the same value
    assert decode(encode(value)) == value


def test_a_large_value_is_stored_compressed_and_a_small_one_as_plain_messagepack():
    # Given a ledger-sized value with repeated text and a small one
    large = {"recent": {f"s{i}": {"reason": "Failed to log in twice within five minutes", "score": i} for i in range(20)}}
    small = {"offers_today": 1}
    # When encoded, Then the large one is a zstd frame under half its MessagePack, the small one MessagePack
    assert encode(large)[:4] == b"\x28\xb5\x2f\xfd" and len(encode(large)) < len(ormsgpack.packb(large)) / 2
    assert encode(small)[0] >= 0x80
    assert decode(encode(large)) == large


def test_values_written_as_json_by_earlier_releases_are_read():
    # Given what Faust's JSON tables wrote, When decoded, Then the same values
    for value in ({"offers_today": 2, "recent": {}}, [1, "v1"], 1796178994736, "C1"):
        assert decode(json.dumps(value).encode()) == value
    assert decode(None) is None
