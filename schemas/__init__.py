"""The Avro contract shared by every astreg part: ``.avsc`` files, model mirrors, codec."""

from .codec import Codec, SchemaRegistryClient, location_codec, node_codec, registration_codec
from .models import (
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
    split_endpoint,
)

__all__ = [
    "Codec",
    "SchemaRegistryClient",
    "registration_codec",
    "node_codec",
    "location_codec",
    "Contact",
    "ContactStatus",
    "DeviceState",
    "EndpointLocation",
    "EventKind",
    "LinkState",
    "LocationStatus",
    "NodeEventKind",
    "NodeStatus",
    "PeerStatus",
    "RegistrationEvent",
    "Source",
    "split_endpoint",
]
