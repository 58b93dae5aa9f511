"""Hypothesis strategies for the contract's records."""

from __future__ import annotations

from hypothesis import strategies as st

from schemas.models import (
    Contact,
    ContactStatus,
    DeviceState,
    EndpointLocation,
    EventKind,
    LinkState,
    LocationStatus,
    NodeEventKind,
    NodeStatus,
    PeerStatus,
    RegistrationEvent,
    Source,
)

text = st.text(max_size=40)
opt_text = st.none() | text
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
opt_long = st.none() | longs
opt_int = st.none() | ints

registration_events = st.builds(
    RegistrationEvent,
    endpoint=text, node=text, producer_epoch=longs, seq=longs, event_time_ms=longs,
    kind=st.sampled_from(EventKind), source=st.sampled_from(Source),
    contact_uri=opt_text, aor=opt_text,
    contact_status=st.none() | st.sampled_from(ContactStatus),
    peer_status=st.none() | st.sampled_from(PeerStatus),
    device_state=st.none() | st.sampled_from(DeviceState),
    ip=opt_text, port=opt_int, transport=opt_text, user_agent=opt_text, rtt_us=opt_long,
    expires_at_ms=opt_long, reg_server=opt_text, cause=opt_text, snapshot_id=opt_text,
)

node_statuses = st.builds(
    NodeStatus,
    node=text, producer_epoch=longs, seq=longs, event_time_ms=longs,
    kind=st.sampled_from(NodeEventKind), ami_link=st.sampled_from(LinkState),
    heartbeat_interval_ms=opt_long, asterisk_version=opt_text, ami_version=opt_text,
    boot_time_ms=opt_long, reload_time_ms=opt_long, snapshot_id=opt_text,
    snapshot_begin_seq=opt_long, snapshot_contacts=opt_int, snapshot_devices=opt_int,
    last_snapshot_id=opt_text, last_snapshot_begin_seq=opt_long, last_snapshot_at_ms=opt_long,
    contacts=opt_int, events_sent=opt_long, buffered=opt_int, producer=opt_text,
)

contacts = st.builds(
    Contact,
    node=text, uri=text, registered_at_ms=longs, updated_at_ms=longs, aor=opt_text,
    status=st.sampled_from(ContactStatus), ip=opt_text, port=opt_int, transport=opt_text,
    user_agent=opt_text, rtt_us=opt_long, expires_at_ms=opt_long, stale=st.booleans(),
    primary=st.booleans(),
)

endpoint_locations = st.builds(
    EndpointLocation,
    endpoint=text, technology=text, resource=text, updated_at_ms=longs,
    primary_node=opt_text, status=st.sampled_from(LocationStatus),
    device_state=st.sampled_from(DeviceState), contact_uri=opt_text, ip=opt_text, port=opt_int,
    transport=opt_text, user_agent=opt_text, rtt_us=opt_long, expires_at_ms=opt_long,
    contacts=st.lists(contacts, max_size=4).map(tuple),
    nodes=st.lists(text, max_size=4).map(tuple),
    last_event_time_ms=opt_long, version=longs,
)
