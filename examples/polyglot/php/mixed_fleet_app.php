<?php
// The PHP app of a mixed fleet, behaving as EasyWeChat 4 on a ThinkPHP Redis store does: the token in
// its own key and format, fetched on the classic endpoint when the key is empty, and on 40001, 40014 or
// 42001 refreshed and the call resent once. It takes no lock: wxkit's processes must cope.
//
//   php mixed_fleet_app.php HOST:PORT PREFIX BASE_URL APPID SECRET SENDS   → one JSON line of figures

[$self, $address, $prefix, $base, $appid, $secret, $sends] = $argv;
[$host, $port] = explode(':', $address);
$redis = new Redis();
$redis->connect($host, (int) $port);
$key = $prefix . 'easywechat.kernel.access_token.' . md5(json_encode(['grant_type' => 'client_credential', 'appid' => $appid, 'secret' => $secret]));
$figures = ['sent' => 0, 'failed' => 0, 'fetches' => 0, 'rejected' => 0];

function http(string $url, ?array $json = null): array {
    $context = stream_context_create(['http' => $json === null ? ['method' => 'GET'] : [
        'method' => 'POST', 'header' => "Content-Type: application/json\r\n", 'content' => json_encode($json),
    ]]);
    return json_decode((string) file_get_contents($url, false, $context), true) ?? [];
}

$token = function (bool $refresh) use ($redis, $key, $base, $appid, $secret, &$figures): string {
    if (!$refresh && ($cached = $redis->get($key)) !== false) {
        return unserialize($cached, ['allowed_classes' => false])['access_token'];
    }
    $answer = http("$base/cgi-bin/token?" . http_build_query(['grant_type' => 'client_credential', 'appid' => $appid, 'secret' => $secret]));
    $figures['fetches']++;
    $redis->setex($key, $answer['expires_in'], serialize(['access_token' => $answer['access_token'], 'expires_in' => $answer['expires_in']]));
    return $answer['access_token'];
};

$message = ['touser' => 'oPhpUser', 'template_id' => 'TPL_PHP', 'data' => ['first' => ['value' => 'from PHP']]];
for ($i = 0; $i < (int) $sends; $i++) {
    $answer = http("$base/cgi-bin/message/template/send?access_token=" . $token(false), $message);
    if (in_array($answer['errcode'] ?? 0, [40001, 40014, 42001], true)) {
        $figures['rejected']++;
        $answer = http("$base/cgi-bin/message/template/send?access_token=" . $token(true), $message);
    }
    ($answer['errcode'] ?? -1) === 0 ? $figures['sent']++ : $figures['failed']++;
}
echo json_encode($figures), "\n";
