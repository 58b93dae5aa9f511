"""Who may speak for a node, at the worker: every record an attacker with produce rights could
write is refused with a reason and changes nothing; the node's own producer always gets through.

``plan_batch`` is the worker's whole decision for a batch (the agent and the bulk ingest both
call it), so these run it on records as the broker delivers them (key, value, headers,
partition, offset, timestamp) with the checks a worker builds from its settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import pytest

from astreg.auth import Keyring, Verifier, new_secret, signature_of
from astreg.partition import partition_for
from astreg.patches.bulk import BulkEvent
from schemas.codec import registration_codec
from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source
from schemas.validate import MAX_SKEW_MS, endpoint_problem, node_id_problem, registration_problem
from streams.agents import Checks, Plan, plan_batch
from streams.rules import Row, location_of

PARTITIONS = 4
NOW = int(time.time() * 1000)
E1 = NOW - 3_600_000  # node1's producer started an hour ago
E2 = NOW - 7_200_000  # node2's
SECRET = new_secret()
KEYS = Keyring(SECRET)
CODEC = registration_codec()


@dataclass
class Msg:
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    headers: list[tuple[str, bytes]] | None
    timestamp: int | None = None
    topic: str = "asterisk.registrations.v1"


class Log:
    """A registrations topic and the table of one worker: append records, apply them in batches."""

    def __init__(self, checks: Checks) -> None:
        self.checks = checks
        self.rows: dict[str, Row] = {}
        self.offset = 0
        self.plans: list[Plan] = []

    def record(self, ev: RegistrationEvent, *, sign_as: str | None = "own", key: bytes | None | str = "own",
               partition: int | None = None, synthetic: bool = False) -> BulkEvent:
        value = CODEC.encode(ev)
        k = ev.endpoint.encode() if key == "own" else key
        assert not isinstance(k, str)
        headers = None
        if sign_as is not None:
            node = ev.node if sign_as == "own" else sign_as
            headers = KEYS.headers(b"registrations", node, k, value, synthetic=synthetic)
        self.offset += 1
        part = partition if partition is not None else partition_for(ev.endpoint, PARTITIONS)
        return BulkEvent(Msg(k, value, part, self.offset, headers, NOW))

    def apply(self, *events: BulkEvent) -> Plan:
        plan = plan_batch(list(events), lambda key, _e: self.rows.get(key), CODEC.decode, NOW, checks=self.checks)
        for key, row, _ in plan.writes:
            self.rows[key] = row
        self.plans.append(plan)
        return plan

    def primary(self, endpoint: str) -> str | None:
        loc = location_of(self.rows.get(endpoint))
        return loc.primary_node if loc is not None else None


def contact(node: str, epoch: int, seq: int, status: ContactStatus = ContactStatus.REACHABLE,
            endpoint: str = "PJSIP/1001", source: Source = Source.LIVE, **kw: Any) -> RegistrationEvent:
    uri = f"sip:{endpoint.split('/')[1]}@10.0.0.{1 if node == 'node1' else 2}:5060"
    fields: dict[str, Any] = dict(
        endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=NOW - 1000 + seq,
        kind=EventKind.CONTACT, source=source, contact_uri=uri, contact_status=status,
        ip=f"10.0.0.{1 if node == 'node1' else 2}", port=5060)
    fields.update(kw)
    return RegistrationEvent(**fields)


def both_registered(log: Log) -> None:
    """PJSIP/1001 on node2 first, then on node1 (the primary: registered last)."""
    plan = log.apply(log.record(contact("node2", E2, 1)), log.record(contact("node1", E1, 1)))
    assert not plan.deadletters and log.primary("PJSIP/1001") == "node1"


@pytest.fixture
def log() -> Log:
    epochs = {"node1": E1, "node2": E2}
    return Log(Checks(verifier=Verifier(SECRET), partitions=PARTITIONS, epoch_of=epochs.get))


def reasons(plan: Plan) -> list[str]:
    return [reason for _msg, reason, _err in plan.deadletters]


def test_an_unsigned_record_changes_nothing_and_is_a_dead_letter(log: Log) -> None:
    both_registered(log)
    before = dict(log.rows)
    plan = log.apply(log.record(contact("node1", E1, 2, ContactStatus.REMOVED), sign_as=None))
    assert reasons(plan) == ["unsigned"] and plan.outcomes["deadletter"] == 1
    assert plan.writes == [] and plan.publish == [] and log.rows == before


def test_a_record_signed_by_another_node_is_refused(log: Log) -> None:
    """node2's producer (its key) cannot speak for node1."""
    both_registered(log)
    plan = log.apply(log.record(contact("node1", E1, 2, ContactStatus.UNREACHABLE), sign_as="node2"))
    assert reasons(plan) == ["bad_signature"] and plan.writes == []
    assert log.primary("PJSIP/1001") == "node1"


def test_a_signature_over_another_value_or_key_is_refused(log: Log) -> None:
    both_registered(log)
    good = log.record(contact("node1", E1, 2, ContactStatus.UNREACHABLE))
    assert isinstance(good.message, Msg)
    tampered = replace(good.message, value=CODEC.encode(contact("node1", E1, 2, ContactStatus.REMOVED)))
    plan = log.apply(BulkEvent(tampered))
    assert reasons(plan) == ["bad_signature"] and log.primary("PJSIP/1001") == "node1"


def test_only_the_workers_may_send_synthetic_decisions(log: Log) -> None:
    """A node's key cannot sign a removal decided by the workers (EXPIRE), the workers' key can."""
    both_registered(log)
    expire = RegistrationEvent(endpoint="PJSIP/1001", node="node1", producer_epoch=E1, seq=1, event_time_ms=NOW,
                               kind=EventKind.EXPIRE, source=Source.SYNTHETIC, cause="forged")
    plan = log.apply(log.record(expire))
    assert reasons(plan) == ["bad_signature"] and log.primary("PJSIP/1001") == "node1"
    plan = log.apply(log.record(expire, synthetic=True))
    assert not plan.deadletters and log.primary("PJSIP/1001") == "node2"


def test_a_forged_high_epoch_is_refused_and_the_node_s_snapshot_still_applies() -> None:
    """Even without signatures (--insecure-no-auth), an epoch ahead of every clock is refused: it
    would have outranked every later record of the node and frozen the endpoint."""
    open_log = Log(Checks(verifier=Verifier(None), partitions=PARTITIONS, epoch_of={"node1": E1, "node2": E2}.get))
    both_registered(open_log)
    plan = open_log.apply(open_log.record(contact("node1", 2**62, 1, ContactStatus.UNREACHABLE)))
    assert reasons(plan) == ["epoch_ahead"] and open_log.primary("PJSIP/1001") == "node1"
    snapshot = contact("node1", E1, 5, ContactStatus.REACHABLE, source=Source.SNAPSHOT, snapshot_id="s")
    plan = open_log.apply(open_log.record(snapshot))
    assert not plan.deadletters and open_log.primary("PJSIP/1001") == "node1"


def test_a_snapshot_of_the_node_s_current_epoch_replaces_stamps_of_an_epoch_it_never_announced() -> None:
    """A row holding a stamp of an epoch node1 never announced (written before the checks, or
    within the allowed skew): node1's own snapshot of its current epoch replaces it."""
    epochs = {"node1": E1, "node2": E2}
    log = Log(Checks(verifier=Verifier(None), partitions=PARTITIONS, epoch_of=epochs.get))
    both_registered(log)
    bogus = NOW + MAX_SKEW_MS // 2  # within the range, never announced on the nodes topic
    log.apply(log.record(contact("node1", bogus, 1, ContactStatus.UNREACHABLE)))
    assert log.primary("PJSIP/1001") == "node2"  # the forged record moved the primary away
    live = log.apply(log.record(contact("node1", E1, 2, ContactStatus.REACHABLE)))
    assert live.outcomes["old_epoch"] == 1  # a live event of the node does not outrank it
    snapshot = contact("node1", E1, 3, ContactStatus.REACHABLE, source=Source.SNAPSHOT, snapshot_id="s1")
    plan = log.apply(log.record(snapshot))
    assert plan.outcomes["replaced_unannounced_epoch"] == 1
    assert log.primary("PJSIP/1001") == "node1"
    row = log.rows["PJSIP/1001"]
    assert row.last_of("node1") == (E1, 3)
    assert [c.status for c in row.contacts if c.node == "node1"] == [ContactStatus.REACHABLE]
    # and node1's later live events apply again
    plan = log.apply(log.record(contact("node1", E1, 4, ContactStatus.UNREACHABLE)))
    assert plan.outcomes["applied"] == 1


def test_an_older_producer_of_a_node_is_fenced(log: Log) -> None:
    """Once node1 announced a newer epoch, records of its older producer never flip the table."""
    both_registered(log)
    newer = E1 + 60_000
    log.checks = replace(log.checks, epoch_of={"node1": newer, "node2": E2}.get)
    plan = log.apply(log.record(contact("node1", E1, 9, ContactStatus.REMOVED)))
    assert plan.outcomes["fenced"] == 1 and plan.writes == [] and log.primary("PJSIP/1001") == "node1"
    plan = log.apply(log.record(contact("node1", newer, 1, ContactStatus.REACHABLE)))
    assert plan.outcomes["applied"] == 1 or plan.outcomes["no_change"] == 1


def test_a_keyless_record_is_a_dead_letter(log: Log) -> None:
    """Kafka spreads keyless records over the partitions: its endpoint's row would never see the
    record, nor any later removal of what it created."""
    plan = log.apply(log.record(contact("node1", E1, 1, endpoint="PJSIP/2002"), key=None, partition=0))
    assert reasons(plan) == ["missing_key"] and log.rows == {}


def test_a_record_in_another_partition_than_its_key_s_is_a_dead_letter(log: Log) -> None:
    ev = contact("node1", E1, 1, endpoint="PJSIP/2002")
    wrong = (partition_for(ev.endpoint, PARTITIONS) + 1) % PARTITIONS
    plan = log.apply(log.record(ev, partition=wrong))
    assert reasons(plan) == ["wrong_partition"] and log.rows == {}


YEAR_0 = -62_167_219_200_000
YEAR_2100 = 4_102_444_800_000


@pytest.mark.parametrize(("fields", "reason"), [
    ({"port": 99999}, "bad_port"),
    ({"port": 0}, "bad_port"),
    ({"rtt_us": -5}, "bad_rtt"),
    ({"expires_at_ms": -1}, "bad_expiry"),
    ({"event_time_ms": YEAR_0}, "event_time_past"),
    ({"event_time_ms": YEAR_2100}, "event_time_future"),
    ({"node": "node1,x)"}, "bad_node"),
    ({"node": "node1&PJSIP/666"}, "bad_node"),
    ({"endpoint": "PJSIP/10 01"}, "bad_endpoint"),
    ({"endpoint": "PJSIP/1001,tT"}, "bad_endpoint"),
    ({"contact_uri": "sip:1001@h\r\nX: y"}, "bad_uri"),
    ({"ip": "h" * 256}, "bad_host"),
    ({"qualify_frequency_s": -1}, "bad_qualify"),
    ({"user_agent": "Phone\x00"}, "bad_text"),
])
def test_out_of_range_values_are_dead_letters_and_stored_nowhere(log: Log, fields: dict[str, Any], reason: str) -> None:
    ev = contact("node1", E1, 1, endpoint="PJSIP/3003")
    ev = replace(ev, **fields)
    plan = log.apply(log.record(ev))
    assert reasons(plan) == [reason] and plan.writes == [] and plan.publish == []


def test_the_same_ranges_admit_what_asterisk_sends() -> None:
    ev = contact("node1", E1, 1, endpoint="PJSIP/jörg€7", ip="pbx-phone-7.branch-office.example.com", port=65535,
                 rtt_us=0, expires_at_ms=NOW + 3_600_000, qualify_frequency_s=60, user_agent="Yealink SIP-T46S 66.86")
    assert registration_problem(ev, NOW, NOW) is None
    assert node_id_problem("ast-22.node_1") is None and endpoint_problem("SIP/trunk_a.b-c") is None
    long_host = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61  # 253: DNS's longest name
    assert registration_problem(replace(ev, ip=long_host), NOW) is None


def test_an_event_far_from_its_record_s_broker_time_is_refused() -> None:
    ev = contact("node1", E1, 1)
    assert registration_problem(ev, NOW, NOW + 2 * MAX_SKEW_MS) == "event_time_skew"


def test_signatures_depend_on_the_topic_kind() -> None:
    """A nodes-topic record cannot be replayed into the registrations topic under its signature."""
    key = KEYS.verifier.key_of("node1")
    assert signature_of(key, b"nodes", b"k", b"v") != signature_of(key, b"registrations", b"k", b"v")


def test_an_event_read_again_publishes_its_row_again(log: Log) -> None:
    """A worker stopped before the cluster acknowledged a batch's location records reads the
    events again (their offsets were not committed): the rows are unchanged, yet published."""
    first = log.record(contact("node1", E1, 1))
    plan = log.apply(first)
    assert [key for key, _row, _p in plan.publish] == ["PJSIP/1001"]
    again = log.apply(first)  # the same record, same offset: a replay
    assert again.outcomes["replay"] == 1 and not again.writes
    assert [(key, row) for key, row, _p in again.publish] == [("PJSIP/1001", log.rows["PJSIP/1001"])]
    # A new event that changes nothing visible is not a replay: nothing published.
    same = log.apply(log.record(contact("node1", E1, 1)))
    assert same.outcomes["duplicate"] == 1 and not same.publish
