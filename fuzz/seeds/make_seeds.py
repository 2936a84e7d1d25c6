#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into seeds/<target>/ (run from fuzz/).

Seeds are small valid (and a few almost-valid) inputs, so libFuzzer starts from the
formats' real shapes. The layouts follow the oracles' `Input` reads (oracles/input.rs):
a length byte before each variable-length field, big-endian integers, the rest last.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def lv(b):
    """A length byte, then the bytes."""
    return bytes([len(b)]) + b


def mvcc_key(user_key, version):
    return b"d" + user_key.replace(b"\x00", b"\x00\xff") + b"\x00\x00" + struct.pack(">Q", (~version) & (2**64 - 1))


# key_codec: encoded keys and values, and structured (a, va, b, vb, prefix) cases.
write("key_codec", "encoded", mvcc_key(b"users/42", 7))
write("key_codec", "escaped", mvcc_key(b"a\x00\xff\x00", 1))
write("key_codec", "value", b"\x01hello")
write("key_codec", "structured", lv(b"ab\x00") + struct.pack(">Q", 5) + lv(b"ab") + struct.pack(">Q", 9) + lv(b"a"))

# command_decode: format byte 1, then bincode (little-endian, fixed-width integers).
def blob(b):
    return struct.pack("<Q", len(b)) + b

batch = (b"\x01" + struct.pack("<I", 0) + struct.pack("<Q", 2)
         + blob(b"k1") + struct.pack("<I", 0) + blob(b"v1") + struct.pack("<I", 3) + struct.pack("<Q", 7)
         + blob(b"k\x00") + struct.pack("<I", 1) + struct.pack("<I", 1))
write("command_decode", "batch", batch)
write("command_decode", "marker", b"\x01" + struct.pack("<I", 1) + struct.pack("<Q", 42))
write("command_decode", "compact", b"\x01" + struct.pack("<I", 3) + struct.pack("<Q", 1000))
write("command_decode", "structured", b"\x00\x02\x02k1\x01\x02v1\x03" + struct.pack(">Q", 7))

# cut_decode: key length byte, key, value.
write("cut_decode", "open", b"\x09c" + struct.pack(">QQQ", 7, 10, 0))
write("cut_decode", "released", b"\x09c" + struct.pack(">QQQ", 8, 0, 5))

# manifest_decode: the documented manifest (docs/BACKUP_FORMAT.md), made consistent.
manifest = {
    "format_version": 1,
    "cluster_id": "befddce112508f48",
    "backup_id": "20261123T153001Z-000007",
    "snapshot": {"id": 42, "time": "2026-11-23T13:35:08.218Z", "cuts": {"0": 120, "1": 98}},
    "parent": {"backup_id": "20261123T150001Z-000005", "cuts": {"0": 100, "1": 90}},
    "shards": 2,
    "files": [
        {"path": "shard-0.cbk", "shard": 0, "bytes": 5120, "blake3": "9f2c" * 16, "keys": 100, "versions": 130},
        {"path": "shard-1.cbk", "shard": 1, "bytes": 77, "blake3": "00ab" * 16, "keys": 1, "versions": 1},
    ],
    "schedule": "quarter-hourly",
    "covered": [{"id": 40, "time": "2026-11-23T13:35:06.101Z", "cuts": {"0": 117, "1": 97}}],
}
write("manifest_decode", "incremental.json", json.dumps(manifest, indent=2))
full = dict(manifest, parent=None, schedule=None, covered=[])
write("manifest_decode", "full.json", json.dumps(full))

# shard_file: mode byte 1 = the payload below, zstd-framed by the oracle.
def record(key, version, value):
    out = struct.pack(">I", len(key)) + key + struct.pack(">Q", version)
    if value is None:
        return out + b"\x00"
    return out + b"\x01" + struct.pack(">I", len(value)) + value

records = [record(b"a", 9, b"x"), record(b"a", 3, None), record(b"b\x00", 5, b"")]
payload = b"CAIRNBAK" + struct.pack(">II", 1, 3) + b"".join(records) + struct.pack(">IQ", 0xFFFFFFFF, len(records))
write("shard_file", "three-records", b"\x01" + payload)
write("shard_file", "empty", b"\x01" + b"CAIRNBAK" + struct.pack(">II", 1, 0) + struct.pack(">IQ", 0xFFFFFFFF, 0))
write("shard_file", "raw-zstd-magic", b"\x00" + b"\x28\xb5\x2f\xfd" + b"\x00" * 12)

# url_decode: key paths and query strings.
write("url_decode", "key", "users/42/%00%FF")
write("url_decode", "query", "prefix=a%2F&limit=5&flag&start_after=users%2F2")
write("url_decode", "bad-escape", "ab%4")

# http_api: method byte, route byte (see METHODS and ROUTES in oracles/http_api.rs),
# a length byte and bytes per route segment, the query, three header slots (a byte
# that is 0 mod 4 adds the header, then its length and bytes), then the body.
GET, PUT, POST, DELETE = 0, 1, 2, 3
KV, KV_EMPTY, KV_KEY, BATCH, SNAPS, SNAP, DIFF, BACKUPS, SCHEDULES, BACKUP, REVERT = range(11)
NO_HEADERS = b"\x01\x01\x01"


def http(method, route, segments=(), query=b"", headers=NO_HEADERS, body=b""):
    return bytes([method, route]) + b"".join(lv(s) for s in segments) + lv(query) + headers + body


write("http_api", "put", http(PUT, KV_KEY, [b"users/42"], body=b"hello"))
write("http_api", "put-if-match", http(PUT, KV_KEY, [b"k"], headers=b"\x00" + lv(b'"12"') + b"\x01\x01", body=b"v"))
write("http_api", "get-stale", http(GET, KV_KEY, [b"users/42"], b"consistency=stale"))
write("http_api", "scan", http(GET, KV, query=b"prefix=users/&limit=2&encoding=base64"))
write("http_api", "batch", http(POST, BATCH, body=json.dumps({"ops": [
    {"op": "put", "key": "k1", "value": "v1"},
    {"op": "delete", "key_b64": "azI=", "if_version": 9}]}).encode()))
write("http_api", "snapshot", http(POST, SNAPS, body=b'{"name":"before"}'))
write("http_api", "snapshot-list", http(GET, SNAPS, query=b"limit=10&before=5"))
write("http_api", "snapshot-show", http(GET, SNAP, [b"before"]))
write("http_api", "diff", http(GET, DIFF, [b"1", b"2"], b"prefix=users/"))
write("http_api", "backup", http(POST, BACKUPS, body=b'{"destination":"x","incremental":false}'))
write("http_api", "backup-show", http(GET, BACKUP, [b"20261123T153001Z-000007"]))
write("http_api", "revert", http(POST, REVERT, body=b'{"prefix":"users/","snapshot":"before"}'))
write("http_api", "as-of", http(GET, KV_KEY, [b"k"], b"as_of=2026-11-23T13:35:09Z"))
