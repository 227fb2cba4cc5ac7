"""recsys.per_object.PerObject: one build per object (by identity, not value), the oldest
dropped past `keep`."""

from recsys.per_object import PerObject


def test_built_once_per_object_and_oldest_dropped():
    built = []
    table = PerObject(lambda key: built.append(key) or len(built), keep=2)
    a, b, c = [1], [1], [2]
    assert table(a) == 1 and table(a) == 1, "the second call is the cached value"
    assert table(b) == 2, "an equal but distinct object gets its own value"
    assert table(c) == 3 and table(a) == 4, "a was the oldest of three with keep=2: rebuilt"
    assert built == [a, b, c, a]
