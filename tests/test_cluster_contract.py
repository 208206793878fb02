"""The core's contract tests again, on a three-master Redis Cluster.

One suite, two stores: the tests below are the very functions of test_appender,
test_ledger, test_consumer and test_operator_cli, collected here a second time
with ``redis_server_url`` pointing at the cluster (``redis+cluster://``), so the
``redis`` fixture, the appender, the ledger and the operator CLI all talk to it.
With 4 partitions the streams' slots fall on all three masters (checked below),
so pipelined appends and the consumers span nodes.
"""

from __future__ import annotations

import pytest

from eventbot.keys import Keys
from eventbot.redisclient import RedisClient
from tests.test_appender import (  # noqa: F401 - collected here, against the cluster
    test_an_id_is_forgotten_after_the_window,
    test_batch_keeps_order_per_partition_and_spreads_partitions,
    test_duplicates_inside_one_batch_are_stored_once,
    test_same_event_twice_is_stored_once,
    test_still_idempotent_after_script_flush,
    test_tokens_streams_are_capped,
)
from tests.test_consumer import (  # noqa: F401
    test_a_consumer_added_and_removed_mid_run_rebalances_and_loses_nothing,
    test_always_failing_entry_is_dead_lettered_and_the_partition_moves_on,
    test_concurrent_mode_does_not_wait_for_a_slow_entry,
    test_dead_consumers_entries_are_claimed_after_idle_threshold,
    test_killed_after_handling_before_ack_redelivers_and_effect_happens_once,
    test_live_slow_consumer_keeps_its_entries,
    test_order_within_a_partition_is_kept,
    test_stop_finishes_the_batch_in_hand,
    test_transient_errors_are_retried_without_dead_lettering,
    test_two_consumers_split_the_partitions,
    test_unknown_type_and_corrupt_payload_do_not_stop_the_consumer,
    test_unknown_types_can_be_dead_lettered_by_policy,
)
from tests.test_ledger import (  # noqa: F401
    test_200_concurrent_writers_on_10_users_lose_nothing,
    test_a_stale_cached_head_never_refuses_wrongly_nor_loses_updates,
    test_decide_may_refuse,
    test_head_survives_script_flush,
    test_stale_expected_seq_raises_a_typed_conflict,
    test_the_same_events_twice_are_appended_once,
)
from tests.test_operator_cli import (  # noqa: F401
    test_dlq_retry_redrives_once_to_the_failing_group_only,
    test_status_shows_groups_and_dead_letters,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def redis_server_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


async def test_the_partitions_under_test_span_every_master(redis: RedisClient, keys: Keys) -> None:
    """Guards the suite's meaning: were all streams on one node, no test here would cross nodes."""
    from redis.asyncio.cluster import RedisCluster

    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    owners = {redis.get_node_from_key(stream).name for stream in keys.streams("conv")}
    assert len(owners) == len(redis.get_primaries()) == 3
