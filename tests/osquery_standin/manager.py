#!/usr/bin/env python3
"""A stand-in for osqueryd's extension manager, built on osquery's published Python bindings
(PyPI `osquery`, code generated from osquery.thrift) and the PyPI `thrift` runtime, so the
extension's hand-written Rust protocol code is checked against independent wire code.

It does what osqueryd does, following osquery/osquery (5.23.0+):
  - serves ExtensionManager on a UNIX socket with buffered transport and the binary protocol
    (osquery/extensions/impl_thrift.cpp);
  - registerExtension: refuses a duplicate name and an SDK older than 1.7.7, hands out a random
    uint16 uuid (osquery/extensions/interface.cpp, ExtensionManagerInterface::registerExtension);
  - pings every registered extension every --watch-interval seconds on a fresh connection and
    drops it after the second failure (osquery/extensions/extensions.cpp,
    ExtensionManagerWatcher::watch);
  - calls an extension with one connection per call, after a ping on its own connection
    (osquery/extensions/extensions.cpp, callExtension / extensionPathActive);
  - tables: {"action":"columns"} then {"action":"generate","context":...} with the context JSON
    of osquery/core/tables.cpp (setRequestFromContext, ConstraintList::serialize): a constraint
    list for every column, sorted by name (a std::map), op codes from osquery/core/tables.h;
  - writable tables: insert/update/delete requests as xUpdate builds them
    (osquery/sql/virtual_table.cpp), json_value_array in compact JSON;
  - logger: {"init": argv0} then {"action":"features"} (osquery/logger/logger.cpp, initLogger);
    results as {"string": json, "category": "event"} in event format (one call per row, removed
    first) or batch format ({"diffResults":...}); snapshots as {"snapshot": json}; status logs
    as {"status":"true","log":"[...]"} with the seven fields s,f,i,m,h,c,u
    (osquery/logger/logger.cpp, serializeIntermediateLog; osquery/core/query.cpp,
    addLegacyFieldsAndDecorations / serializeQueryLogItem(AsEvents));
  - query: answers `osquery_schedule` from rows the test sets (the core runs real SQL);
  - shutdown: Extension.shutdown on the extension's socket.

The test drives it through stdin/stdout, one JSON object per line each way.
"""

import argparse
import json
import os
import random
import socket
import sys
import threading
import time

from thrift.protocol import TBinaryProtocol
from thrift.server import TServer
from thrift.transport import TSocket, TTransport

from osquery.extensions import Extension, ExtensionManager
from osquery.extensions.ttypes import (
    ExtensionResponse,
    ExtensionStatus,
    InternalExtensionInfo,
    InternalOptionInfo,
)

EXT_SUCCESS, EXT_FAILED = 0, 1
HOST_IDENTIFIER = "standin-host"


def version_at_least(required, version):
    """osquery/utils/info/version.cpp versionAtLeast: 'Unknown' and '0.0.0' style pass."""
    if version in ("Unknown", "0.0.0", ""):
        return True
    try:
        v = [int(x) for x in version.split(".")[:3]]
        r = [int(x) for x in required.split(".")[:3]]
    except ValueError:
        return True
    return v >= r


def compact(obj):
    # rapidjson's Writer: no spaces, keys in insertion order.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def ascii_time(t):
    # osquery/utils/system/time.cpp toAsciiTime: asctime(gmtime) trimmed + " UTC".
    return time.asctime(time.gmtime(t)) + " UTC"


class State:
    def __init__(self, watch_interval):
        self.lock = threading.Lock()
        self.extensions = {}  # uuid -> (InternalExtensionInfo, registry)
        self.attempts = []  # every registerExtension: name, code, message, uuid
        self.schedule = []
        self.options = {
            "logger_plugin": "log_sensor",
            "config_plugin": "filesystem",
            "distributed_plugin": "tls",
            "pack_delimiter": "_",
            "extensions_interval": str(watch_interval),
            "logger_event_type": "true",
        }
        self.failures = {}
        self.calls_seen = []


class ManagerHandler(ExtensionManager.Iface):
    def __init__(self, state, socket_path):
        self.state = state
        self.socket_path = socket_path

    # Extension (the manager is an Extension too)
    def ping(self):
        return ExtensionStatus(code=EXT_SUCCESS, message="pong", uuid=0)

    def call(self, registry, item, request):
        return ExtensionResponse(
            status=ExtensionStatus(code=EXT_FAILED, message="stand-in core has no %s plugin %s" % (registry, item)),
            response=[],
        )

    def shutdown(self):
        pass

    # ExtensionManager
    def extensions(self):
        with self.state.lock:
            return {uuid: info for uuid, (info, _) in self.state.extensions.items()}

    def options(self):
        with self.state.lock:
            return {
                k: InternalOptionInfo(value=v, default_value=v, type="string")
                for k, v in self.state.options.items()
            }

    def registerExtension(self, info, registry):
        with self.state.lock:
            names = [i.name for i, _ in self.state.extensions.values()]
            if info.name in names:
                status = ExtensionStatus(code=EXT_FAILED, message="Duplicate extension registered")
            elif not version_at_least("1.7.7", info.sdk_version):
                status = ExtensionStatus(code=EXT_FAILED, message="Incompatible extension SDK version")
            elif not registry:
                status = ExtensionStatus(code=EXT_FAILED, message="Failed adding registry: empty")
            else:
                uuid = random.randint(1, 65535)
                while uuid in self.state.extensions:
                    uuid = random.randint(1, 65535)
                self.state.extensions[uuid] = (info, registry)
                status = ExtensionStatus(code=EXT_SUCCESS, message="OK", uuid=uuid)
            self.state.attempts.append(
                {"name": info.name, "sdk_version": info.sdk_version, "code": status.code,
                 "message": status.message, "uuid": status.uuid}
            )
            return status

    def deregisterExtension(self, uuid):
        with self.state.lock:
            if uuid in self.state.extensions:
                del self.state.extensions[uuid]
                return ExtensionStatus(code=EXT_SUCCESS, message="OK", uuid=0)
            return ExtensionStatus(code=EXT_FAILED, message="No extension UUID registered")

    def query(self, sql):
        with self.state.lock:
            self.state.calls_seen.append(sql)
            if "osquery_schedule" in sql:
                return ExtensionResponse(
                    status=ExtensionStatus(code=EXT_SUCCESS, message="OK", uuid=0),
                    response=[dict(r) for r in self.state.schedule],
                )
        return ExtensionResponse(
            status=ExtensionStatus(code=EXT_FAILED, message="the stand-in has no SQL engine for: " + sql),
            response=[],
        )

    def getQueryColumns(self, sql):
        return ExtensionResponse(
            status=ExtensionStatus(code=EXT_FAILED, message="the stand-in has no SQL engine"), response=[]
        )


def extension_client(path, timeout_ms=10000):
    sock = TSocket.TSocket(unix_socket=path)
    sock.setTimeout(timeout_ms)
    transport = TTransport.TBufferedTransport(sock)
    protocol = TBinaryProtocol.TBinaryProtocol(transport)
    client = Extension.Client(protocol)
    transport.open()
    return client, transport


class Core:
    def __init__(self, socket_path, state):
        self.socket_path = socket_path
        self.state = state

    def ext_path(self, uuid):
        # osquery/extensions/extensions.h getExtensionSocket: "<socket>.<uuid>"
        return "%s.%d" % (self.socket_path, uuid)

    def uuid_of(self, name):
        with self.state.lock:
            for uuid, (info, _) in self.state.extensions.items():
                if info.name == name:
                    return uuid
        raise RuntimeError("no extension named %s is registered" % name)

    def ping(self, uuid):
        client, transport = extension_client(self.ext_path(uuid))
        try:
            return client.ping()
        finally:
            transport.close()

    def call(self, uuid, registry, item, request):
        # callExtension: a ping on its own connection, then the call on a fresh one.
        self.ping(uuid)
        client, transport = extension_client(self.ext_path(uuid))
        try:
            resp = client.call(registry, item, request)
        finally:
            transport.close()
        return {
            "code": resp.status.code,
            "message": resp.status.message,
            "uuid": resp.status.uuid,
            "response": resp.response,
        }

    def watch(self, interval):
        # ExtensionManagerWatcher::watch: ping each extension; drop it after two failures.
        while True:
            time.sleep(interval)
            with self.state.lock:
                uuids = list(self.state.extensions.keys())
            for uuid in uuids:
                try:
                    status = self.ping(uuid)
                    ok = status.code == EXT_SUCCESS
                except Exception:
                    ok = False
                failures = 1 if ok else self.state.failures.get(uuid, 1) + 1
                self.state.failures[uuid] = failures
                if failures > 1:
                    with self.state.lock:
                        self.state.extensions.pop(uuid, None)

    # --- what the SQL engine would send -------------------------------------------------
    def columns(self, uuid, table):
        r = self.call(uuid, "table", table, {"action": "columns"})
        cols = [(x["name"], x["type"]) for x in r["response"] if x.get("id") == "column"]
        return r, cols

    def context(self, cols, constraints, cols_used=None):
        # virtual_table.cpp xFilter: every column gets a ConstraintList (affinity = its type);
        # the map is a std::map, so serialisation is sorted by column name.
        by_name = {name: {"name": name, "list": [], "affinity": ctype} for name, ctype in cols}
        for name, op, expr in constraints:
            by_name[name]["list"].append({"op": op, "expr": expr})
        ctx = {"constraints": [by_name[n] for n in sorted(by_name)]}
        used = cols_used if cols_used is not None else [n for n, _ in cols]
        ctx["colsUsed"] = used
        ctx["colsUsedBitset"] = sum(1 << i for i, (n, _) in enumerate(cols) if n in used)
        return compact(ctx)

    def generate(self, uuid, table, constraints, cols_used=None):
        _, cols = self.columns(uuid, table)
        ctx = self.context(cols, constraints, cols_used)
        r = self.call(uuid, "table", table, {"action": "generate", "context": ctx})
        r["context"] = ctx
        return r

    def write(self, uuid, table, cmd):
        action = cmd["action"]
        req = {"action": action}
        if action == "delete":
            req["id"] = str(cmd["id"])
        elif action == "insert":
            req["json_value_array"] = compact(cmd["values"])
            if cmd.get("rowid") is not None:
                req["auto_rowid"] = "true"
                req["id"] = str(cmd["rowid"])
            else:
                req["auto_rowid"] = "false"
        elif action == "update":
            req["id"] = str(cmd["id"])
            if cmd.get("new_id") is not None and str(cmd["new_id"]) != str(cmd["id"]):
                req["new_id"] = str(cmd["new_id"])
            req["json_value_array"] = compact(cmd["values"])
        else:
            raise RuntimeError("unknown write action " + action)
        req["context"] = compact({"constraints": []})
        return self.call(uuid, "table", table, req)

    def legacy_fields(self, name, counter, epoch, now):
        # query.cpp addLegacyFieldsAndDecorations: the field order osquery writes.
        return [
            ("name", name),
            ("hostIdentifier", HOST_IDENTIFIER),
            ("calendarTime", ascii_time(now)),
            ("unixTime", now),
            ("epoch", epoch),
            ("counter", counter),
            ("numerics", False),
        ]

    def log_results(self, uuid, logger, cmd):
        name, now = cmd["name"], int(time.time())
        counter, epoch = cmd.get("counter", 0), cmd.get("epoch", 0)
        added, removed = cmd.get("added", []), cmd.get("removed", [])
        docs = []
        if cmd.get("mode", "event") == "event":
            # serializeQueryLogItemAsEvents: removed rows first, one document per row.
            for action, rows in (("removed", removed), ("added", added)):
                for row in rows:
                    doc = dict(self.legacy_fields(name, counter, epoch, now))
                    doc["columns"] = row
                    doc["action"] = action
                    docs.append(compact(doc))
        else:
            doc = {"diffResults": {"removed": removed, "added": added}}
            doc.update(self.legacy_fields(name, counter, epoch, now))
            docs.append(compact(doc))
        return [self.call(uuid, "logger", logger, {"string": d, "category": "event"}) for d in docs], docs

    def log_snapshot(self, uuid, logger, cmd):
        name, now = cmd["name"], int(time.time())
        rows = cmd.get("rows", [])
        if cmd.get("event_format"):
            docs = []
            for row in rows:
                doc = dict(self.legacy_fields(name, 0, cmd.get("epoch", 0), now))
                doc["columns"] = row
                doc["action"] = "snapshot"
                docs.append(compact(doc))
        else:
            doc = {"snapshot": rows, "action": "snapshot"}
            doc.update(self.legacy_fields(name, 0, cmd.get("epoch", 0), now))
            docs = [compact(doc)]
        return [self.call(uuid, "logger", logger, {"snapshot": d}) for d in docs], docs

    def log_status(self, uuid, logger, lines):
        now = int(time.time())
        log = []
        for l in lines:
            # serializeIntermediateLog: s, f, i, m, h, c, u.
            log.append({"s": l.get("s", 0), "f": l.get("f", "standin.cpp"), "i": l.get("i", 1),
                        "m": l["m"], "h": HOST_IDENTIFIER, "c": ascii_time(now), "u": now})
        return self.call(uuid, "logger", logger, {"status": "true", "log": compact(log)})


def serve(socket_path, state):
    handler = ManagerHandler(state, socket_path)
    processor = ExtensionManager.Processor(handler)
    transport = TSocket.TServerSocket(unix_socket=socket_path)
    server = TServer.TThreadedServer(
        processor, transport, TTransport.TBufferedTransportFactory(),
        TBinaryProtocol.TBinaryProtocolFactory(), daemon=True,
    )
    # TThreadedServer.serve() binds and listens itself; report "listening" once it accepts.
    threading.Thread(target=server.serve, daemon=True).start()
    deadline = time.time() + 30
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_path)
            return transport
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
        finally:
            probe.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--watch-interval", type=float, default=1.0)
    args = ap.parse_args()

    state = State(args.watch_interval)
    serve(args.socket, state)
    core = Core(args.socket, state)
    threading.Thread(target=core.watch, args=(args.watch_interval,), daemon=True).start()

    def reply(obj):
        sys.stdout.write(compact(obj) + "\n")
        sys.stdout.flush()

    reply({"event": "listening", "socket": args.socket, "pid": os.getpid()})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            reply({"ok": True, "result": run(core, state, cmd, args.socket)})
        except Exception as e:  # reported to the test, which decides
            reply({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
    # stdin closed: the test is gone; go away like a stopped osqueryd.
    try:
        os.unlink(args.socket)
    except OSError:
        pass
    os._exit(0)


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v is not None:
            return v
        time.sleep(0.05)
    raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))


def run(core, state, cmd, socket_path):
    op = cmd["cmd"]
    logger = cmd.get("logger", "log_sensor")
    if op == "wait_registered":
        def find():
            with state.lock:
                for uuid, (info, registry) in state.extensions.items():
                    if info.name == cmd["name"]:
                        return {"uuid": uuid, "name": info.name, "version": info.version,
                                "sdk_version": info.sdk_version, "registry": registry}
            return None
        return wait_for(find, cmd.get("timeout", 60), "extension " + cmd["name"])
    if op == "wait_gone":
        def gone():
            with state.lock:
                return True if cmd["uuid"] not in state.extensions else None
        return wait_for(gone, cmd.get("timeout", 60), "extension %s to go" % cmd["uuid"])
    if op == "attempts":
        with state.lock:
            return list(state.attempts)
    if op == "registered":
        with state.lock:
            return {str(u): i.name for u, (i, _) in state.extensions.items()}
    uuid = cmd.get("uuid") or (core.uuid_of(cmd["name"]) if "name" in cmd else None)
    if op == "ping":
        s = core.ping(uuid)
        return {"code": s.code, "message": s.message, "uuid": s.uuid}
    if op == "columns":
        return core.columns(uuid, cmd["table"])[0]
    if op == "generate":
        return core.generate(uuid, cmd["table"], cmd.get("constraints", []), cmd.get("cols_used"))
    if op == "write":
        return core.write(uuid, cmd["table"], cmd)
    if op == "call":
        return core.call(uuid, cmd["registry"], cmd["item"], cmd["request"])
    if op == "logger_init":
        core.call(uuid, "logger", logger, {"init": "osqueryd"})
        return core.call(uuid, "logger", logger, {"action": "features"})
    if op == "log_results":
        results, docs = core.log_results(uuid, logger, cmd)
        return {"calls": results, "docs": docs}
    if op == "log_snapshot":
        results, docs = core.log_snapshot(uuid, logger, cmd)
        return {"calls": results, "docs": docs}
    if op == "log_status":
        return core.log_status(uuid, logger, cmd["lines"])
    if op == "start_status_relay":
        # osqueryd relays buffered status logs about every 3 s to loggers that declared
        # LOGSTATUS (osquery/logger/logger.cpp relayStatusLogs, osquery/dispatcher/scheduler.cpp).
        features = core.call(uuid, "logger", logger, {"action": "features"})
        if not features["code"] & 1:
            return {"relaying": False, "features": features["code"]}
        interval = cmd.get("interval", 3)

        def relay():
            n = 0
            while True:
                time.sleep(interval)
                n += 1
                try:
                    core.log_status(uuid, logger, [{"s": 0, "f": "scheduler.cpp", "i": 87,
                                                    "m": "stand-in status relay %d" % n}])
                except Exception:
                    return  # the extension is gone
        threading.Thread(target=relay, daemon=True).start()
        return {"relaying": True, "features": features["code"]}
    if op == "log_event":
        doc = compact(cmd["row"])
        return {"call": core.call(uuid, "logger", logger, {"event": doc}), "doc": doc}
    if op == "set_schedule":
        with state.lock:
            state.schedule = [{k: str(v) for k, v in r.items()} for r in cmd["rows"]]
        return len(state.schedule)
    if op == "schedule_queries":
        with state.lock:
            return sum(1 for s in state.calls_seen if "osquery_schedule" in s)
    if op == "concurrent":
        # Several connections open at once, each pinged first, then all calling together.
        n = cmd.get("n", 8)
        conns = [extension_client(core.ext_path(uuid)) for _ in range(n)]
        for c, _ in conns:
            c.ping()
        results = [None] * n
        def one(i):
            c, _ = conns[i]
            r = c.call("table", cmd.get("table", "log_sensor_config"), {"action": "columns"})
            results[i] = r.status.code
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for _, t in conns:
            t.close()
        return results
    if op == "shutdown_extension":
        client, transport = extension_client(core.ext_path(uuid))
        try:
            client.shutdown()
        finally:
            transport.close()
        return True
    if op == "stop":
        # osqueryd exits: its socket disappears and nothing answers any more.
        try:
            os.unlink(socket_path)
        except OSError:
            pass
        sys.stdout.write(compact({"ok": True, "result": "stopping"}) + "\n")
        sys.stdout.flush()
        os._exit(0)
    raise RuntimeError("unknown command " + op)


if __name__ == "__main__":
    main()
