"""deploy/asterisk/: the example Asterisk configuration parses, grants what the producer and the
AstDB sink need and no more, and reads exactly the keys, tables and URLs astreg writes."""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "asterisk"

# What the sinks write (the contract given to the sink part).
ASTDB_FAMILY = "astreg"
ASTDB_KEYS = {"node", "addr", "state", "contact"}
SQL_TABLE = "astreg_locations"
ROUTES_VIEW = "astreg_routes"
ROUTES_COLUMNS = {"resource", "endpoint", "technology", "node", "ip", "port", "transport", "status",
                  "device_state", "contact_uri", "updated_at"}
SQL_COLUMNS = {"endpoint", "technology", "resource", "node", "ip", "port", "transport", "status",
               "device_state", "contact_uri", "user_agent", "rtt_us", "expires_at", "updated_at", "contacts"}
REDIS_PREFIX = "astreg:"

# Manager action → write classes allowed to run it (0 classes = any logged-in user), from the
# Asterisk sources (see the header of manager.conf).
ACTION_CLASSES: dict[str, set[str]] = {
    "Login": set(), "Logoff": set(), "Challenge": set(), "Ping": set(), "Events": set(),
    "CoreSettings": {"system", "reporting"},
    "CoreStatus": {"system", "reporting"},
    "DeviceStateList": {"call", "reporting"},
    "PJSIPShowContacts": {"system"},
    "PJSIPShowEndpoints": {"system"},
    "PJSIPShowEndpoint": {"system"},
    "ModuleCheck": {"system"},
    "DBGet": {"system", "reporting"},
    "DBGetTree": {"system", "reporting"},
    "DBPut": {"system"},
    "DBDel": {"system"},
    "DBDelTree": {"system"},
}
PRODUCER_ACTIONS = ["Login", "Challenge", "Ping", "CoreSettings", "CoreStatus", "PJSIPShowContacts",
                    "PJSIPShowEndpoints", "PJSIPShowEndpoint", "ModuleCheck", "DeviceStateList"]
ASTDB_SINK_ACTIONS = ["Login", "Challenge", "Ping", "CoreSettings", "DBPut", "DBDel", "DBDelTree", "DBGetTree"]
PRODUCER_EVENTS = {"ContactStatus": "system", "PeerStatus": "system", "FullyBooted": "system",
                   "Shutdown": "system", "DeviceStateChange": "call", "RTCPSent": "reporting",
                   "RTCPReceived": "reporting", "SuccessfulAuth": "security"}
MANAGER_CLASSES = {"system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf",
                   "reporting", "cdr", "dialplan", "originate", "agi", "cc", "aoc", "test", "security",
                   "message", "all"}


@dataclass
class Section:
    name: str
    templates: list[str]
    is_template: bool
    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        values = [v for k, v in self.items if k == key]
        return values[-1] if values else None

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.items if k == key]


def parse_asterisk(path: Path, repeatable: set[str]) -> list[Section]:
    """Asterisk's config syntax: [name](!) templates, [name](tpl), key = value or key => value,
    ';' comments. Keys other than ``repeatable`` may appear once per section."""
    sections: list[Section] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"(?<!\\);.*", "", raw).strip()
        if not line:
            continue
        m = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", line)
        if m:
            opts = [o.strip() for o in (m.group(2) or "").split(",") if o.strip()]
            sections.append(Section(m.group(1), [o for o in opts if o != "!"], "!" in opts))
            continue
        assert sections, f"{path.name}:{lineno}: setting before any section"
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*=>?\s*(.*)", line)
        assert m, f"{path.name}:{lineno}: not a setting: {raw!r}"
        key, value = m.group(1).lower(), m.group(2).strip()
        section = sections[-1]
        assert key in repeatable or section.get(key) is None, f"{path.name}:{lineno}: {key} twice in [{section.name}]"
        section.items.append((key, value))
    return sections


def by_name(sections: list[Section]) -> dict[str, Section]:
    out = {}
    for s in sections:
        assert s.name not in out, f"section [{s.name}] twice"
        out[s.name] = s
    return out


def classes(value: str | None) -> set[str]:
    got = {c.strip() for c in (value or "").split(",") if c.strip()}
    assert got <= MANAGER_CLASSES, f"unknown manager classes {got - MANAGER_CLASSES}"
    return got


def allowed(write: set[str], action: str) -> bool:
    need = ACTION_CLASSES[action]
    return not need or bool(write & need) or "all" in write


# ---------------------------------------------------------------- manager.conf


@pytest.fixture(scope="module")
def manager() -> dict[str, Section]:
    return by_name(parse_asterisk(CONF / "manager.conf", repeatable={"permit", "deny", "eventfilter", "acl"}))


def test_manager_general(manager: dict[str, Section]) -> None:
    general = manager["general"]
    assert general.get("enabled") == "yes"
    assert general.get("timestampevents") == "yes"
    assert set(manager) == {"general", "astreg-producer", "astreg-astdb"}


@pytest.mark.parametrize("user", ["astreg-producer", "astreg-astdb"])
def test_users_are_bound_to_their_hosts(manager: dict[str, Section], user: str) -> None:
    sect = manager[user]
    keys = [k for k, _ in sect.items if k in ("deny", "permit")]
    assert keys[0] == "deny" and "permit" in keys, "deny everything first, then permit the host"
    assert sect.get("deny") == "0.0.0.0/0.0.0.0"
    assert sect.get("secret")


def test_producer_can_run_its_actions_and_read_its_events(manager: dict[str, Section]) -> None:
    sect = manager["astreg-producer"]
    write, read = classes(sect.get("write")), classes(sect.get("read"))
    assert "all" not in write | read
    for action in PRODUCER_ACTIONS:
        assert allowed(write, action), f"producer cannot run {action}"
    assert set(PRODUCER_EVENTS.values()) <= read
    # Least privilege: dropping any class loses an action the producer needs.
    for cls in write:
        assert not all(allowed(write - {cls}, a) for a in PRODUCER_ACTIONS), f"write class {cls} is not needed"
    assert read == set(PRODUCER_EVENTS.values()), "reads classes it does not use"


def test_producer_event_filter_passes_exactly_what_it_uses(manager: dict[str, Section]) -> None:
    filters = manager["astreg-producer"].all("eventfilter")
    include = [re.compile(f) for f in filters if not f.startswith("!")]
    exclude = [re.compile(f[1:]) for f in filters if f.startswith("!")]

    def passes(event: str) -> bool:
        text = f"Event: {event}\r\nPrivilege: system,all\r\nSystemName: node1\r\n"
        return (not include or any(r.search(text) for r in include)) and not any(r.search(text) for r in exclude)

    for event in PRODUCER_EVENTS:
        assert passes(event), f"the event filter drops {event}"
    for event in ("Newchannel", "VarSet", "Newexten", "Hangup", "Registry", "Reload"):
        assert not passes(event), f"the event filter lets {event} through"


def test_astdb_sink_user_writes_astdb_and_reads_nothing(manager: dict[str, Section]) -> None:
    sect = manager["astreg-astdb"]
    write = classes(sect.get("write"))
    assert write == {"system"}
    for action in ASTDB_SINK_ACTIONS:
        assert allowed(write, action)
    assert not classes(sect.get("read"))


def test_fixture_events_carry_the_classes_granted(manager: dict[str, Section]) -> None:
    # The recorded AMI transcripts show each event's Privilege header: the read classes must
    # include the first class of every event the producer uses.
    read = classes(manager["astreg-producer"].get("read"))
    seen = {}
    for path in (ROOT / "tests" / "fixtures" / "ami").glob("*.txt"):
        for m in re.finditer(r"Event: (\w+)\r?\nPrivilege: ([\w,]+)", path.read_text(errors="replace")):
            seen.setdefault(m.group(1), m.group(2).split(",")[0])
    checked = {e: c for e, c in seen.items() if e in PRODUCER_EVENTS}
    assert checked, "no producer event found in the AMI fixtures"
    for event, cls in checked.items():
        assert cls == PRODUCER_EVENTS[event] and cls in read, (event, cls)


# ---------------------------------------------------------------- dialplan and stores


@pytest.fixture(scope="module")
def dialplan() -> dict[str, Section]:
    return by_name(parse_asterisk(CONF / "extensions.conf", repeatable={"exten", "same", "include"}))


def dialplan_text() -> str:
    # Commented-out alternatives are examples too: check them as well.
    return "\n".join(line.lstrip(" ;") for line in (CONF / "extensions.conf").read_text().splitlines())


def test_astdb_reads_match_the_sink_keys() -> None:
    keys = re.findall(r"\$\{DB(?:_EXISTS)?\(([^)]*)\)\}", dialplan_text())
    assert any(k == "astreg/node/${ARG1}" for k in keys)
    for key in keys:
        family, _, rest = key.partition("/")
        assert family == ASTDB_FAMILY, key
        assert rest.split("/")[0] in ASTDB_KEYS, key


def test_curl_uses_the_worker_api() -> None:
    urls = re.findall(r"\$\{CURL\(([^)]*)\)\}", dialplan_text())
    api = [u for u in urls if "/api/v1/" in u]
    assert api
    for url in api:
        assert re.fullmatch(r"\$\{ASTREG_API(_2)?\}/api/v1/endpoints/PJSIP%2F\$\{ARG1\}/node", url), url


def test_redis_reads_match_the_sink_keys() -> None:
    keys = re.findall(r"\$\{REDIS\(([^)]*)\)\}", dialplan_text()) + re.findall(r"/GET/([^.]*)\.txt", dialplan_text())
    assert keys
    for key in keys:
        assert key == f"{REDIS_PREFIX}node:${{ARG1}}", key


def test_gotos_and_gosubs_land_on_existing_contexts(dialplan: dict[str, Section]) -> None:
    targets = re.findall(r"(?:Goto|Gosub)\(([\w-]+),", dialplan_text())
    assert targets
    for ctx in targets:
        assert ctx in dialplan, f"no context [{ctx}]"
    for label in re.findall(r"\?(\w+)\)", dialplan_text()):
        assert re.search(rf"n\({label}\),", dialplan_text()), f"no priority label {label}"


def test_routing_pattern(dialplan: dict[str, Section]) -> None:
    route = "\n".join(v for _, v in dialplan["astreg-route"].items)
    assert 'GotoIf($["${ASTREG_OWNER}" = ""]?fallback)' in route
    assert '"${ASTREG_OWNER}" = "${SYSTEMNAME}"]?local' in route
    assert "Dial(PJSIP/${EXTEN}@${ASTREG_OWNER}" in route
    assert "n(local),Dial(PJSIP/${EXTEN}," in route
    # Calls from other nodes are never forwarded again (no lookup in from-cluster).
    cluster = "\n".join(v for _, v in dialplan["from-cluster"].items)
    assert "astreg-lookup" not in cluster and "@" not in cluster.split("Dial(")[1].split(")")[0]


def test_func_odbc_reads_the_sql_sink_table() -> None:
    funcs = by_name(parse_asterisk(CONF / "func_odbc.conf", repeatable=set()))
    res_odbc = by_name(parse_asterisk(CONF / "res_odbc.conf", repeatable=set()))
    used = set(re.findall(r"\$\{ODBC_(\w+)\(", dialplan_text()))
    assert used and used <= set(funcs)
    for name, sect in funcs.items():
        assert sect.get("dsn") in res_odbc, f"{name}: dsn {sect.get('dsn')} not in res_odbc.conf"
        sql = sect.get("readsql") or ""
        m = re.fullmatch(r"SELECT (.+) FROM (\w+) WHERE (\w+) = '(PJSIP/)?\$\{SQL_ESC\(\$\{ARG1\}\)\}'", sql)
        assert m, f"{name}: unexpected SQL {sql!r} (arguments must go through SQL_ESC)"
        assert m.group(2) in (SQL_TABLE, ROUTES_VIEW)
        columns = SQL_COLUMNS if m.group(2) == SQL_TABLE else ROUTES_COLUMNS
        assert {c.strip() for c in m.group(1).split(",")} | {m.group(3)} <= columns
        # By resource in the view (one row per resource), by endpoint id in the table.
        assert (m.group(3), bool(m.group(4))) in (("resource", False), ("endpoint", True)), sql


def test_odbc_ini_examples_name_installed_style_drivers() -> None:
    inst = configparser.ConfigParser(comment_prefixes=(";", "#"))
    inst.read(CONF / "odbcinst.ini.example")
    ini = configparser.ConfigParser(comment_prefixes=(";", "#"))
    ini.read(CONF / "odbc.ini.example")
    res_odbc = by_name(parse_asterisk(CONF / "res_odbc.conf", repeatable=set()))
    assert res_odbc["astreg"].get("dsn") in ini.sections()
    drivers = {ini[s]["Driver"] for s in ini.sections()}
    assert drivers == set(inst.sections()) == {"SQLite3", "PostgreSQL Unicode", "MariaDB Unicode"}


def test_trunks_are_named_after_nodes_and_land_in_from_cluster(dialplan: dict[str, Section]) -> None:
    sections = parse_asterisk(CONF / "pjsip.conf", repeatable={"match", "allow", "disallow"})
    templates = {s.name: s for s in sections if s.is_template}
    # pjsip.conf allows one name per object type ([node2] endpoint and [node2] aor).
    types: dict[tuple[str, str], Section] = {}
    for s in sections:
        if s.is_template:
            continue
        merged = [kv for t in s.templates for kv in templates[t].items] + s.items
        typ = next(v for k, v in reversed(merged) if k == "type")
        assert (s.name, typ) not in types, f"[{s.name}] type={typ} twice"
        types[(s.name, typ)] = Section(s.name, [], False, merged)
    endpoints = {n: s for (n, t), s in types.items() if t == "endpoint"}
    assert set(endpoints) == {"node2", "node3"}
    for name, ep in endpoints.items():
        assert ep.get("context") == "from-cluster" and "from-cluster" in dialplan
        assert (ep.get("aors"), "aor") in types
        identify = [s for (n, t), s in types.items() if t == "identify" and s.get("endpoint") == name]
        assert identify, f"no identify for {name}"
