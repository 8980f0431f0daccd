from __future__ import annotations

import itertools
from collections import Counter

from wsgate_proxy.balancing import Balancer, EndpointHealth
from wsgate_proxy.config import Endpoint, LoadBalancing


def endpoints(n: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(address=f"10.0.0.{i}", port=8080) for i in range(1, n + 1))


def balancer(eps, algorithm="RoundRobin", sessions=None, health=None):
    return Balancer(eps, LoadBalancing(algorithm=algorithm, hash_on="Header", hash_header="x"),
                    turn=itertools.count(), sessions=sessions or Counter(),
                    health=health or EndpointHealth())


def test_round_robin_rotates_and_lists_every_endpoint_for_retries():
    eps = endpoints(3)
    b = balancer(eps)
    orders = [b.candidates() for _ in range(4)]
    assert [o[0] for o in orders] == [eps[0], eps[1], eps[2], eps[0]]
    assert orders[1] == [eps[1], eps[2], eps[0]]


def test_least_connections_prefers_the_least_loaded_and_rotates_ties():
    eps = endpoints(3)
    sessions = Counter({eps[0]: 5, eps[1]: 1, eps[2]: 1})
    b = balancer(eps, "LeastConnections", sessions)
    firsts = [b.candidates()[0] for _ in range(4)]
    assert set(firsts) == {eps[1], eps[2]}
    assert b.candidates()[-1] == eps[0]


def test_consistent_hash_is_stable_and_spread():
    eps = endpoints(4)
    b = balancer(eps, "ConsistentHash")
    keys = [f"room-{i}" for i in range(2000)]
    first = {k: b.candidates(k)[0] for k in keys}
    assert all(b.candidates(k)[0] == first[k] for k in keys[:100])
    rebuilt = balancer(eps, "ConsistentHash")  # a new config with the same endpoints
    assert all(rebuilt.candidates(k)[0] == first[k] for k in keys)
    shares = Counter(first.values())
    assert all(400 <= n <= 600 for n in shares.values()), shares  # ~500 each


def test_consistent_hash_moves_about_one_nth_of_keys():
    keys = [f"user-{i}" for i in range(4000)]
    four = balancer(endpoints(4), "ConsistentHash")
    five = balancer(endpoints(5), "ConsistentHash")
    before = {k: four.candidates(k)[0] for k in keys}
    after = {k: five.candidates(k)[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.15 < len(moved) / len(keys) < 0.25  # 1/5 expected
    assert all(after[k] == endpoints(5)[4] for k in moved)  # only to the new endpoint
    three = balancer(endpoints(4)[:3], "ConsistentHash")
    removed = endpoints(4)[3]
    assert all(three.candidates(k)[0] == before[k] for k in keys if before[k] != removed)


def test_without_a_hash_key_consistent_hash_falls_back_to_turns():
    eps = endpoints(2)
    b = balancer(eps, "ConsistentHash")
    assert [b.candidates(None)[0] for _ in range(2)] == [eps[0], eps[1]]


def test_failing_endpoints_go_last_with_a_growing_backoff():
    eps = endpoints(3)
    health = EndpointHealth()
    b = balancer(eps, health=health)
    health.failed(eps[0], now=100.0)
    assert health.avoided(eps[0], 100.9)
    assert not health.avoided(eps[0], 101.1)
    health.failed(eps[0], now=101.1)  # second failure: 2 s
    assert health.avoided(eps[0], 103.0)
    assert not health.avoided(eps[0], 103.2)
    health.failed(eps[0])  # now, on the real clock
    health.failed(eps[1])
    for _ in range(3):
        order = b.candidates()
        assert order[0] == eps[2]
        assert set(order[1:]) == {eps[0], eps[1]}
    health.succeeded(eps[1])
    assert eps[1] in b.candidates()[:2]
