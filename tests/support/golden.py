"""The records whose v1 bytes are committed in tests/fixtures/golden/ (written once, never
regenerated: today's reader must keep reading them)."""

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
    RegistrationEvent,
    Source,
)

REGISTRATION = RegistrationEvent(
    endpoint="PJSIP/1001", node="node1", producer_epoch=1795741758000, seq=42,
    event_time_ms=1795741759435, kind=EventKind.CONTACT, source=Source.LIVE,
    contact_uri="sip:1001@127.0.0.1:6101", aor="1001", contact_status=ContactStatus.REACHABLE,
    ip="127.0.0.1", port=6101, transport="udp", user_agent="SIPp/Linux ünïcödé",
    rtt_us=449, expires_at_ms=1795741819000, reg_server="node1",
)
NODE = NodeStatus(
    node="node1", producer_epoch=1795741758000, seq=43, event_time_ms=1795741760000,
    kind=NodeEventKind.SNAPSHOT_COMPLETE, ami_link=LinkState.UP, heartbeat_interval_ms=5000,
    asterisk_version="22.10.1", ami_version="11.0.0", boot_time_ms=1795741741000,
    snapshot_id="node1-1795741758000-1", snapshot_begin_seq=40, snapshot_contacts=1,
    snapshot_devices=12,
)
LOCATION = EndpointLocation(
    endpoint="PJSIP/1001", technology="PJSIP", resource="1001", updated_at_ms=1795741760100,
    primary_node="node1", status=LocationStatus.REGISTERED, device_state=DeviceState.NOT_INUSE,
    contact_uri="sip:1001@127.0.0.1:6101", ip="127.0.0.1", port=6101, transport="udp",
    user_agent="SIPp/Linux", rtt_us=449, expires_at_ms=1795741819000,
    contacts=(Contact(node="node1", uri="sip:1001@127.0.0.1:6101", registered_at_ms=1795741759435,
                      updated_at_ms=1795741759436, aor="1001", status=ContactStatus.REACHABLE,
                      ip="127.0.0.1", port=6101, transport="udp", user_agent="SIPp/Linux",
                      rtt_us=449, expires_at_ms=1795741819000, primary=True),),
    nodes=("node1",), last_event_time_ms=1795741759436, version=3,
)
GOLDEN = {
    "registration_event.v1.bin": REGISTRATION,
    "node_status.v1.bin": NODE,
    "endpoint_location.v1.bin": LOCATION,
}
