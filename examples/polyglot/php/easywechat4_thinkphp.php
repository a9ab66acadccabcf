<?php
// What EasyWeChat 4 stores through a ThinkPHP 6 Redis cache store, with PHP's own functions:
// key  = {store prefix} . 'easywechat.kernel.access_token.' . md5(json_encode($credentials))
// value = serialize(['access_token' => …, 'expires_in' => …]) (ThinkPHP serializes every non-numeric value)
// TTL  = expires_in (EasyWeChat 4.2.12+), written with SETEX as ThinkPHP's Redis driver does.
//
//   php easywechat4_thinkphp.php write HOST:PORT PREFIX APPID SECRET TOKEN EXPIRES_IN
//   php easywechat4_thinkphp.php read  HOST:PORT PREFIX APPID SECRET        → prints the token, or exits 3

[$self, $action, $address, $prefix, $appid, $secret] = $argv + [null, null, null, null, null, null];
[$host, $port] = explode(':', (string) $address);
$redis = new Redis();
$redis->connect($host, (int) $port);

// EasyWeChat\OfficialAccount\Auth\AccessToken::getCredentials(), in this order.
$credentials = ['grant_type' => 'client_credential', 'appid' => $appid, 'secret' => $secret];
$key = $prefix . 'easywechat.kernel.access_token.' . md5(json_encode($credentials));

if ($action === 'write') {
    $expiresIn = (int) $argv[7];
    $redis->setex($key, $expiresIn, serialize(['access_token' => $argv[6], 'expires_in' => $expiresIn]));
    exit(0);
}
if ($action === 'read') {
    $value = $redis->get($key);
    if ($value === false) exit(3);
    $token = unserialize($value, ['allowed_classes' => false]);
    echo $token['access_token'], "\n";
    exit(0);
}
exit(2);
