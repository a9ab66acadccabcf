<?php
// Reads and writes wxkit's native entry, written from docs/key-schema.md alone.
//
//   php native.php read  redis|memcached HOST:PORT APPID            → prints the token, or exits 3
//   php native.php write redis|memcached HOST:PORT APPID TOKEN EXPIRES_IN
//
// Key: wechat:stable_access_token:{appid}. Value: {"access_token":…,"expires_at":…,"fetched_at":…}.
// TTL: expires_in − 300 (half of expires_in when that leaves less than one second).

[$self, $action, $kind, $address, $appid] = $argv + [null, null, null, null, null];
[$host, $port] = explode(':', (string) $address);
$key = "wechat:stable_access_token:$appid";

if ($kind === 'redis') {
    $store = new Redis();
    $store->connect($host, (int) $port);
    $get = fn () => $store->get($key);
    $set = fn (string $value, int $ttl) => $store->setex($key, $ttl, $value);
} elseif ($kind === 'memcached') {
    $store = new Memcached();
    $store->addServer($host, (int) $port);
    $get = fn () => $store->get($key);
    $set = fn (string $value, int $ttl) => $store->set($key, $value, $ttl);
} else {
    fwrite(STDERR, "usage: php native.php read|write redis|memcached HOST:PORT APPID [TOKEN EXPIRES_IN]\n");
    exit(2);
}

if ($action === 'read') {
    $entry = json_decode((string) $get(), true);
    $valid = is_array($entry) && is_string($entry['access_token'] ?? null) && $entry['access_token'] !== ''
        && is_numeric($entry['expires_at'] ?? null) && $entry['expires_at'] - time() > 30;
    if (!$valid) exit(3);
    echo $entry['access_token'], "\n";
    exit(0);
}

if ($action === 'write') {
    $token = $argv[5];
    $expiresIn = (int) $argv[6];
    $now = time();
    $value = json_encode(['access_token' => $token, 'expires_at' => $now + $expiresIn, 'fetched_at' => $now],
        JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    $ttl = $expiresIn - 300 >= 1 ? $expiresIn - 300 : max(1, intdiv($expiresIn, 2));
    $set($value, $ttl);
    exit(0);
}
exit(2);
