"""DnsCache (TTL, bound, per-client) and FragmentTable (order, holes, bounds)."""

from detector.flows.dnscache import DnsCache
from detector.flows.fragments import FragmentTable
from detector.model import DnsAnswer, DnsMessage, IPFragment

C1, C2 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
ADDR = bytes([104, 18, 32, 47])


def answer(ttl=60):
    return DnsMessage(7, True, 0, (("chatgpt.com", 1),), (
        DnsAnswer("chatgpt.com", 5, ttl, "chatgpt.com.cdn.cloudflare.net"),
        DnsAnswer("chatgpt.com.cdn.cloudflare.net", 1, ttl, "104.18.32.47"),
    ))


def test_cache_maps_the_answer_address_to_the_question_name():
    cache = DnsCache(grace=0)
    assert cache.learn(0, C1, answer()) == 1
    assert cache.lookup(10, C1, ADDR) == "chatgpt.com"


def test_cache_is_per_client():
    cache = DnsCache()
    cache.learn(0, C1, answer())
    assert cache.lookup(1, C2, ADDR) is None


def test_cache_entry_expires_after_ttl_plus_grace():
    cache = DnsCache(grace=30)
    cache.learn(0, C1, answer(ttl=60))
    assert cache.lookup(89, C1, ADDR) == "chatgpt.com"
    assert cache.lookup(91, C1, ADDR) is None


def test_cache_bound_evicts_oldest():
    cache = DnsCache(max_entries=10)
    for i in range(30):
        cache.learn(i, bytes([10, 0, 0, i]), answer())
    assert len(cache) == 10 and cache.evictions == 20


def frag(off, data, more, ident=1):
    return IPFragment(0.0, C1, C2, 17, ident, off, more, data)


def test_fragments_out_of_order_reassemble():
    t = FragmentTable()
    payload = bytes(range(200)) * 10
    assert t.add(frag(1600, payload[1600:], False)) is None
    assert t.add(frag(0, payload[:800], True)) is None
    assert t.add(frag(800, payload[800:1600], True)) == payload
    assert len(t) == 0


def test_fragment_hole_never_completes_and_times_out():
    t = FragmentTable()
    t.add(frag(0, b"a" * 8, True))
    t.add(frag(16, b"c" * 8, False))
    assert len(t) == 1
    t.add(IPFragment(100.0, C1, C2, 17, 2, 0, True, b"x" * 8))
    assert t.dropped == 1


def test_oversized_datagram_is_dropped():
    t = FragmentTable()
    assert t.add(frag(65_530, b"x" * 16, False)) is None
    assert t.dropped == 1
