"""What wechatpy 2 stores with its RedisStorage (wechatpy/session/redisstorage.py, client/base.py):

    {prefix}:{appid}_access_token             json.dumps(token), TTL expires_in
    {prefix}:{appid}_access_token_expires_at  json.dumps(int(time.time()) + expires_in), no TTL

    python3 wechatpy_redis.py write HOST:PORT APPID TOKEN EXPIRES_IN
    python3 wechatpy_redis.py read  HOST:PORT APPID        -> prints the token, or exits 3
"""
import json
import sys
import time

import redis

PREFIX = "wechatpy"


def main(action, address, appid, *rest):
    host, port = address.split(":")
    store = redis.Redis(host=host, port=int(port))
    key = f"{PREFIX}:{appid}_access_token"
    if action == "write":
        token, expires_in = rest[0], int(rest[1])
        store.set(key, json.dumps(token), ex=expires_in)
        store.set(f"{key}_expires_at", json.dumps(int(time.time()) + expires_in))
        return 0
    if action == "read":
        raw = store.get(key)
        if raw is None:
            return 3
        print(json.loads(raw))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
