"""astreg.partition: the one partition rule agrees with aiokafka's (and Java's) default partitioner."""

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from astreg.partition import partition_for


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_same_partition_as_the_default_partitioner(key: str, count: int) -> None:
    parts = list(range(count))
    expected = DefaultPartitioner()(key.encode("utf-8"), parts, parts)
    assert partition_for(key, count) == expected
    assert partition_for(key.encode("utf-8"), count) == expected


# Kafka's own murmur2 cases (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}


def test_same_partition_as_the_java_client() -> None:
    for key, signed in JAVA_MURMUR2.items():
        # Java: Utils.toPositive(murmur2(key)) % numPartitions
        assert partition_for(key, 7) == (signed & 0x7FFFFFFF) % 7, key
