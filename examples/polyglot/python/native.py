"""Reads and writes wxkit's native entry, written from docs/key-schema.md alone.

    python3 native.py read  redis|memcached HOST:PORT APPID            -> prints the token, or exits 3
    python3 native.py write redis|memcached HOST:PORT APPID TOKEN EXPIRES_IN
"""
import json
import sys
import time


def main(action, kind, address, appid, *rest):
    host, port = address.split(":")
    key = f"wechat:stable_access_token:{appid}"
    if kind == "redis":
        import redis

        store = redis.Redis(host=host, port=int(port))
        get = lambda: store.get(key)
        put = lambda value, ttl: store.set(key, value, ex=ttl)
    elif kind == "memcached":
        from pymemcache.client.base import Client

        store = Client((host, int(port)))
        get = lambda: store.get(key)
        put = lambda value, ttl: store.set(key, value, expire=ttl)
    else:
        return 2

    if action == "read":
        raw = get()
        try:
            entry = json.loads(raw) if raw is not None else None
        except ValueError:
            entry = None
        token = entry.get("access_token") if isinstance(entry, dict) else None
        expires_at = entry.get("expires_at") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not token or not isinstance(expires_at, (int, float)) or expires_at - time.time() <= 30:
            return 3
        print(token)
        return 0

    if action == "write":
        token, expires_in = rest[0], int(rest[1])
        now = int(time.time())
        # Compact JSON, fields in the documented order.
        value = json.dumps({"access_token": token, "expires_at": now + expires_in, "fetched_at": now}, separators=(",", ":"), ensure_ascii=False)
        ttl = expires_in - 300 if expires_in - 300 >= 1 else max(1, expires_in // 2)
        put(value.encode("utf-8"), ttl)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
