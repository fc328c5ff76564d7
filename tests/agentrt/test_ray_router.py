"""The KV-aware router's pure policy: index, scoring, affinity, restart behaviour."""

from __future__ import annotations

import pytest

from agentrt.ray.config import RayConfig
from agentrt.ray.router import Decision, KVIndex, Router, RouterError, rendezvous


def test_index_overlap_counts_leading_blocks_per_replica() -> None:
    index = KVIndex()
    index.apply("a", stored=[1, 2, 3])
    index.apply("b", stored=[1, 9, 3])
    assert index.overlap([1, 2, 3, 4]) == {"a": 3, "b": 1}
    assert index.overlap([7, 2]) == {}


def test_removed_blocks_leave_the_index_and_dropping_a_replica_forgets_it() -> None:
    index = KVIndex()
    index.apply("a", stored=[1, 2])
    index.apply("a", removed=[2])
    assert index.overlap([1, 2]) == {"a": 1}
    index.drop("a")
    assert index.overlap([1]) == {} and index.holders == {}


def test_kv_aware_sends_a_request_to_the_replica_holding_its_prefix() -> None:
    router = Router("kv-aware")
    for r in ("r0", "r1", "r2"):
        router.add_replica(r)
    router.index.apply("r2", stored=[10, 11, 12])
    decision = router.route([10, 11, 12, 13])
    assert decision.replica == "r2" and decision.overlap_blocks == 3


def test_kv_aware_leaves_a_busy_replica_when_the_load_outweighs_the_overlap() -> None:
    router = Router("kv-aware")
    for r in ("r0", "r1"):
        router.add_replica(r)
    router.index.apply("r0", stored=[1])
    router.begin("r0", [f"other-{i}" for i in range(50)])
    router.begin("r0", [f"more-{i}" for i in range(50)])  # 2 in flight vs 0: beyond the affinity slack
    assert router.route([1, 2, 3]).replica == "r1"


def test_kv_aware_keeps_a_conversation_on_its_replica_while_the_load_is_balanced() -> None:
    router = Router("kv-aware", affinity_slack=1, balance_slack=None)  # requests in flight only (work: below)
    for r in ("r0", "r1"):
        router.add_replica(r)
    conversation = ["sys", *[f"c{i}" for i in range(20)]]
    router.index.apply("r0", stored=conversation)
    router.index.apply("r1", stored=["sys"])
    router.begin("r0", ["sys", *[f"other{i}" for i in range(60)]])  # costlier by blocks, one request more
    assert router.route([*conversation, "turn2"]).replica == "r0"
    assert Router("kv-aware", affinity_slack=None, index=router.index, loads=router.loads).route(
        [*conversation, "turn2"]).replica == "r1"  # the cost alone sends it away
    router.begin("r0", ["sys", "x"])  # 2 more in flight than r1: balance wins
    assert router.route([*conversation, "turn2"]).replica == "r1"


def test_in_flight_requests_on_one_prefix_load_their_replica_with_it_once() -> None:
    """Two requests in flight on a shared 8-block prefix cost their replica 8 blocks, not 16: a
    third request on that prefix stays with the prefix instead of being pushed off by its own
    siblings (the Mooncake replay sent it away and recomputed it elsewhere)."""
    router = Router("kv-aware", affinity_slack=None)  # the cost alone
    for r in ("r0", "r1"):
        router.add_replica(r)
    prefix = list(range(8))
    router.index.apply("r0", stored=prefix)
    router.begin("r0", [*prefix, "a"])
    router.begin("r0", [*prefix, "b"])
    router.begin("r1", ["x", "y"])
    assert router.loads["r0"].num_blocks == 10 + 2  # 8 shared + 2 own prompt blocks + 2 output blocks
    assert router.route([*prefix, "c"]).replica == "r0"
    router.end("r0", [*prefix, "a"])
    router.end("r0", [*prefix, "b"])
    assert router.loads["r0"].num_blocks == 0 and router.loads["r0"].active == {}


def test_round_robin_cycles_and_least_loaded_picks_the_idle_replica() -> None:
    rr = Router("round-robin")
    for r in ("a", "b", "c"):
        rr.add_replica(r)
    assert [rr.route([1]).replica for _ in range(4)] == ["a", "b", "c", "a"]
    ll = Router("least-loaded")
    for r in ("a", "b"):
        ll.add_replica(r)
    ll.begin("a", [1])
    assert ll.route([1]).replica == "b"
    ll.end("a", [1])
    ll.begin("b", [1])
    assert ll.route([1]).replica == "a"


def test_session_affinity_survives_a_router_restart_without_any_router_state() -> None:
    names = [f"replica-{i}" for i in range(8)]
    first = Router("kv-aware")
    for r in names:
        first.add_replica(r)
    placed = {s: first.route([f"{s}-0"], session=s).replica for s in ("job1/s", "job2/s", "job3/s")}
    restarted = Router("kv-aware")
    for r in reversed(names):
        restarted.add_replica(r)
    assert {s: restarted.route([f"{s}-0"], session=s).replica for s in placed} == placed


def test_later_turns_follow_the_conversation_blocks_through_a_rebuilt_index() -> None:
    names = ["a", "b", "c"]
    router = Router("kv-aware")
    for r in names:
        router.add_replica(r)
    turn1 = ["sys", "u1"]
    first = router.route(turn1, session="s").replica
    router.index.apply(first, stored=turn1 + ["a1"])  # the replica's block events after turn 1
    snapshot = {r: set(router.index.by_replica.get(r, ())) for r in names}
    restarted = Router("kv-aware")
    for r in names:
        restarted.add_replica(r)
        restarted.index.apply(r, stored=snapshot[r])
    assert restarted.route(turn1 + ["a1", "u2"], session="s").replica == first


def test_rendezvous_moves_only_the_keys_of_a_removed_replica() -> None:
    names = ["a", "b", "c", "d"]
    keys = [f"k{i}" for i in range(200)]
    before = {k: rendezvous(k, names)[0] for k in keys}
    after = {k: rendezvous(k, ["a", "b", "d"])[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "c")
    assert {after[k] for k in keys} == {"a", "b", "d"}


def test_bad_policy_and_no_replicas_raise_typed_errors() -> None:
    with pytest.raises(RouterError, match="'fastest'"):
        Router("fastest")
    with pytest.raises(RouterError, match="no live engine replica"):
        Router().route([1])
    with pytest.raises(RouterError, match="affinity_slack.*-1"):
        Router(affinity_slack=-1)


def test_ray_config_names_the_bad_value() -> None:
    with pytest.raises(RouterError, match="1 prefill and 0 decode"):
        RayConfig(num_prefill_replicas=1)
    with pytest.raises(RouterError, match="'disk'"):
        RayConfig(tool_resources={"read": "disk"})
    assert RayConfig(num_replicas=0, num_prefill_replicas=1, num_decode_replicas=2).disaggregated


def test_cli_options_are_checked_before_any_ray_process_starts() -> None:
    ray = pytest.importorskip("ray")
    from agentrt.ray import RayCluster

    with pytest.raises(RouterError, match="1 prefill and 0 decode"):
        RayCluster.from_cli("local", 1, 1, 0, "kv-aware")
    with pytest.raises(RouterError, match="'fastest'"):
        RayCluster.from_cli("local", 2, 0, 0, "fastest")
    assert not ray.is_initialized()


def test_kv_aware_sends_work_to_the_least_busy_replica_once_the_load_is_out_of_balance() -> None:
    """New jobs sharing a long system prompt do not pile on the replica that holds it: past the
    slack, the replicas with the fewest requests in flight compete (the cost alone would keep it)."""
    router = Router("kv-aware", affinity_slack=1)
    for r in ("r0", "r1"):
        router.add_replica(r)
    system = [f"sys{i}" for i in range(100)]
    router.index.apply("r0", stored=system)
    router.begin("r0", [*system, "job1"])
    router.begin("r0", [*system, "job2"])
    new_job = [*system, "job3"]
    assert Router("kv-aware", affinity_slack=None, index=router.index, loads=router.loads).route(new_job).replica == "r0"
    assert router.route(new_job).replica == "r1"


def test_a_conversation_stays_on_its_replica_when_another_replica_is_the_busy_one() -> None:
    """The slack is judged on the holder: r2 having two more requests than r1 does not move a
    conversation off r0, whose load is within the slack (the busiest-replica rule moved it)."""
    router = Router("kv-aware", affinity_slack=1)
    for r in ("r0", "r1", "r2"):
        router.add_replica(r)
    conversation = ["sys", *[f"c{i}" for i in range(10)]]
    router.index.apply("r0", stored=conversation)
    for r in ("r1", "r2"):
        router.index.apply(r, stored=["sys"])
    router.begin("r0", ["sys", "other"])
    router.begin("r2", ["sys", "x"])
    router.begin("r2", ["sys", "y"])
    assert router.route([*conversation, "turn"]).replica == "r0"
    router.begin("r0", ["sys", "z"])  # now r0 itself is 2 above the idlest: the conversation leaves
    assert router.route([*conversation, "turn"]).replica == "r1"


def test_a_new_conversation_goes_to_the_replica_with_the_fewest_requests_in_flight() -> None:
    """Every replica holds the shared system prompt, so nothing ties a new conversation to one: it
    goes by requests in flight, not by active blocks (the cost would pick r1, with one short
    request more than r0's one long one). Without the work balance (below), which would go by work."""
    router = Router("kv-aware", affinity_slack=1, balance_slack=None)
    for r in ("r0", "r1"):
        router.add_replica(r)
    system = [f"sys{i}" for i in range(4)]
    for r in ("r0", "r1"):
        router.index.apply(r, stored=system)
    router.begin("r0", [*system, *[f"long{i}" for i in range(40)]])
    router.begin("r1", [*system, "a"])
    router.begin("r1", [*system, "b"])
    new_job = [*system, "new"]
    assert router.route(new_job).replica == "r0"
    assert Router("kv-aware", affinity_slack=None, index=router.index, loads=router.loads).route(new_job).replica == "r1"


def _worked(router: Router, replica: str, blocks: int) -> None:
    """`replica` computed `blocks` blocks (a finished request that held none of its prompt)."""
    hashes = [f"{replica}-w{router.loads[replica].work}-{i}" for i in range(blocks - 1)]
    router.begin(replica, hashes)
    router.end(replica, hashes)


def test_a_new_conversation_goes_to_the_least_worked_replica() -> None:
    """Requests in flight tie, so the work each replica was sent decides: a few long conversations
    that started on r0 do not make it the home of the next one too."""
    router = Router("kv-aware", affinity_slack=1, balance_slack=0.15)
    for r in ("r0", "r1", "r2"):
        router.add_replica(r)
    system = [f"sys{i}" for i in range(4)]
    for r in ("r0", "r1", "r2"):
        router.index.apply(r, stored=system)
    _worked(router, "r0", 300)
    _worked(router, "r1", 100)
    _worked(router, "r2", 200)
    assert router.route([*system, "new"]).replica == "r1"


def test_a_conversation_leaves_its_replica_only_past_the_balance_slack() -> None:
    """The holder keeps its conversation while its work is within (1 + slack) x the mean; past it
    the conversation re-prefills on the least-worked replica, and with the balance off it stays."""
    router = Router("kv-aware", affinity_slack=1, balance_slack=0.15)
    for r in ("r0", "r1"):
        router.add_replica(r)
    conversation = ["sys", *[f"c{i}" for i in range(20)]]
    router.index.apply("r0", stored=conversation)
    router.index.apply("r1", stored=["sys"])
    _worked(router, "r0", 110)
    _worked(router, "r1", 100)  # r0 at 1.05x the mean: within the slack
    turn = [*conversation, "turn"]
    assert router.route(turn) == Decision("r0", len(conversation))
    _worked(router, "r0", 60)  # r0 now 170 vs 100: 1.26x the mean
    assert router.route(turn) == Decision("r1", 1)
    off = Router("kv-aware", affinity_slack=1, balance_slack=None, index=router.index, loads=router.loads)
    assert off.route(turn).replica == "r0"


def test_a_replica_busy_with_the_conversation_itself_keeps_it() -> None:
    """Right after start the replica that served a conversation's first turn has done all the work
    there is, but moving the conversation would only hand that imbalance on: it leaves only when
    its holder did more than twice what the move would re-prefill."""
    router = Router("kv-aware", affinity_slack=1, balance_slack=0.15)
    for r in ("r0", "r1"):
        router.add_replica(r)
    turn1 = [f"t{i}" for i in range(15)]
    router.begin("r0", turn1)  # 15 prompt blocks + 1 output: r0 16, r1 0
    router.end("r0", turn1)
    router.index.apply("r0", stored=turn1)
    assert router.route([*turn1, "turn2"]).replica == "r0"
    _worked(router, "r0", 20)  # r0 36 > 2 x 15 and > 1.15 x the mean 18: now it leaves
    assert router.route([*turn1, "turn2"]).replica == "r1"


def test_recorded_work_counts_prompt_misses_and_output_and_decays() -> None:
    router = Router("kv-aware", balance_slack=0.15, work_half_life=2.0)
    router.add_replica("r0")
    router.begin("r0", list(range(10)), num_output_blocks=2, cached_blocks=7)  # 3 misses + 2 output
    assert router.loads["r0"].work == pytest.approx(5.0)
    router.begin("r0", list(range(10)), num_output_blocks=0, cached_blocks=10)
    router.begin("r0", list(range(10)), num_output_blocks=0, cached_blocks=10)
    assert router.loads["r0"].work == pytest.approx(2.5)  # two requests later: halved
    router.add_replica("r1")  # a replacement joins at the mean, not at zero
    assert router.loads["r1"].work == pytest.approx(2.5)
    with pytest.raises(RouterError, match="balance_slack.*-0.5"):
        Router(balance_slack=-0.5)
    with pytest.raises(RouterError, match="work_half_life"):
        Router(work_half_life=0)
