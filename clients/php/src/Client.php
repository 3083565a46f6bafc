<?php

declare(strict_types=1);

namespace OffLog;

/**
 * OffLog's PHP client. log() validates (Contract: the rules of
 * lib/domain/contract.ts) and appends to this request's buffer; nothing
 * leaves the process until flush(), which runs by itself at shutdown, after
 * fastcgi_finish_request() when PHP-FPM provides it, so the response is gone
 * before any byte is sent.
 *
 * Transports, in order: the local agent (`offlog agent`) over a persistent
 * non-blocking unix socket; when it is absent or full, one `offlog.batch`
 * job per request straight to gearmand (ext-gearman); when both fail, the
 * events are dropped, counted in stats() and logged once per outage.
 *
 * Nothing here throws into the page: a bad event is refused (log() returns
 * false), counted and logged; a network fault is counted. Only a bad option
 * given to the constructor throws, once, at deploy time.
 */
final class Client
{
    public const FN_BATCH = 'offlog.batch';

    private const OPTIONS = ['agentSocket', 'gearmanServers', 'gearmanTimeoutMs', 'agentWriteTimeoutMs', 'finishRequest', 'flushAtShutdown', 'maxBatchEvents', 'logger'];
    /** Tuples below 10^15 are written unquoted, with no further check: the log() fast path. */
    private const FAST_USER_MAX = 999999999999999;

    private ?string $agentSocket;
    private string $gearmanServers;
    private int $gearmanTimeoutMs;
    private int $agentWriteTimeoutMs;
    private bool $finishRequest;
    private int $maxBatchEvents;
    /** @var callable(string): void */
    private $logger;

    /** @var list<string> */
    private array $normal = [];
    /** @var list<string> */
    private array $high = [];
    private bool $normalWatched = false;
    private bool $highWatched = false;
    private array $counts = ['logged' => 0, 'sent' => 0, 'fallback' => 0, 'dropped' => 0, 'invalid' => 0];

    /** Per process: fallbacks and drops not yet reported to the agent, outages already logged. */
    private static int $unreportedFallback = 0;
    private static int $unreportedDropped = 0;
    /** @var array<string, array{since: float, events: int}> kind → when the outage began, events lost or diverted since */
    private static array $outages = [];
    /** @var array<string, float> kind → when an outage of that kind was last logged */
    private static array $lastLogged = [];
    private const OUTAGE_QUIET_S = 60.0;
    /** @var array<string, true> fields whose bad values were already logged */
    private static array $invalidLogged = [];
    /** @var array<string, \GearmanClient> */
    private static array $gearman = [];

    /**
     * @param array{agentSocket?: ?string, gearmanServers?: string, gearmanTimeoutMs?: int, agentWriteTimeoutMs?: int,
     *   finishRequest?: bool, flushAtShutdown?: bool, maxBatchEvents?: int, logger?: callable(string): void} $options
     */
    public function __construct(array $options = [])
    {
        foreach ($options as $k => $_) {
            if (!in_array($k, self::OPTIONS, true)) throw new \InvalidArgumentException("OffLog\\Client: unknown option \"$k\" (known: " . implode(', ', self::OPTIONS) . ')');
        }
        $env = static fn (string $k): ?string => ($v = getenv($k)) === false || $v === '' ? null : $v;
        $this->agentSocket = array_key_exists('agentSocket', $options) ? $options['agentSocket'] : ($env('OFFLOG_AGENT_SOCKET') ?? '/run/offlog/agent.sock');
        $this->gearmanServers = $options['gearmanServers'] ?? $env('OFFLOG_GEARMAN_SERVERS') ?? '127.0.0.1:4730';
        $this->gearmanTimeoutMs = self::positive($options, 'gearmanTimeoutMs', 1000);
        $this->agentWriteTimeoutMs = self::positive($options, 'agentWriteTimeoutMs', 20);
        $this->maxBatchEvents = self::positive($options, 'maxBatchEvents', 1000);
        $this->finishRequest = (bool) ($options['finishRequest'] ?? true);
        $this->logger = $options['logger'] ?? static function (string $line): void {
            error_log($line);
        };
        if ($this->agentSocket === '') $this->agentSocket = null;
        if ($options['flushAtShutdown'] ?? true) register_shutdown_function([$this, 'shutdown']);
    }

    /**
     * Counts one event (value summed per slice; at: epoch ms, ISO-8601 or a
     * DateTimeInterface, default now; payload kept only for watched events).
     * Returns false, counted and logged, for an event the contract refuses.
     */
    public function log(mixed $userId, mixed $actionId, mixed $value = 1, mixed $at = null, mixed $payload = null): bool
    {
        if (is_int($userId) && $userId >= 0 && $userId <= self::FAST_USER_MAX && is_int($actionId) && $actionId >= 1 && $actionId <= 65535
            && is_int($value) && $value >= 0 && $value <= Contract::MAX_SAFE && $payload === null
            && ($at === null || (is_int($at) && $at >= 0 && $at < Contract::MAX_AT_MS))) {
            $this->normal[] = '[' . $userId . ',' . $actionId . ',' . $value . ',' . ($at ?? (int) (microtime(true) * 1000)) . ']';
            ++$this->counts['logged'];
            if (count($this->normal) >= $this->maxBatchEvents) $this->flush();
            return true;
        }
        return $this->add($userId, $actionId, $value, $at, $payload, false, false);
    }

    /** An error-type action: sent at high priority (SUBMIT_JOB_HIGH_BG), ahead of the queue. */
    public function logError(mixed $userId, mixed $actionId, mixed $value = 1, mixed $at = null, mixed $payload = null): bool
    {
        return $this->add($userId, $actionId, $value, $at, $payload, true, false);
    }

    /** Counts the event and keeps its raw record (watched-events table, ActivityWatched) whatever the watch lists say. */
    public function logWatched(mixed $userId, mixed $actionId, mixed $payload = null, mixed $value = 1, mixed $at = null): bool
    {
        return $this->add($userId, $actionId, $value, $at, $payload, false, true);
    }

    // The original PHP OffLog client's vocabulary (the Node SDK has the same names).

    public function logSimpleAction(mixed $userId, mixed $actionId): bool
    {
        return $this->add($userId, $actionId, 0, null, null, false, false);
    }

    public function logWatchedAction(mixed $userId, mixed $actionId, mixed $payload = null): bool
    {
        return $this->add($userId, $actionId, 1, null, $payload, false, true);
    }

    public function logWatchedUser(mixed $userId, mixed $actionId, mixed $payload = null): bool
    {
        return $this->add($userId, $actionId, 1, null, $payload, false, true);
    }

    public function logErrorReturn(mixed $userId, mixed $actionId, mixed $payload = null): bool
    {
        return $this->add($userId, $actionId, 0, null, $payload, true, false);
    }

    /**
     * The old `logSimple` job, for code that called
     * `$gearman->doBackground('logSimple', $workload)`: pass the same workload
     * (`{"userid": 1, "actionId": 2, "payload": "…"}`, as JSON or an array).
     * Counted like the logSimple worker counts it (value 0, stamped now), but
     * batched with the request's other events.
     */
    public function logSimple(string|array $workload): bool
    {
        try {
            $job = is_string($workload) ? json_decode($workload, true, 8, JSON_THROW_ON_ERROR) : $workload;
            if (!is_array($job) || ($job !== [] && array_is_list($job))) throw new InvalidEvent('logSimple', 'must be a JSON object, got ' . Contract::excerpt($job));
            foreach ($job as $k => $_) {
                if ($k !== 'userid' && $k !== 'actionId' && $k !== 'payload') throw new InvalidEvent('logSimple.' . Contract::excerpt((string) $k, 40), 'is not a known field (userid, actionId, payload)');
            }
            $tuple = Contract::tuple(
                Contract::userId(array_key_exists('userid', $job) ? $job['userid'] : Contract::ABSENT, 'logSimple.userid'),
                Contract::actionId(array_key_exists('actionId', $job) ? $job['actionId'] : Contract::ABSENT, 'logSimple.actionId'),
                0,
                (int) (microtime(true) * 1000),
                Contract::payload($job['payload'] ?? null, 'logSimple.payload'),
            );
        } catch (\JsonException $e) {
            return $this->refuse(new InvalidEvent('logSimple', 'is not valid JSON: ' . $e->getMessage()));
        } catch (InvalidEvent $e) {
            return $this->refuse($e);
        }
        return $this->buffer($tuple, false, false);
    }

    /** Sends what this request buffered, now. Runs by itself at shutdown. Never throws. */
    public function flush(): void
    {
        $frames = [];
        if ($this->high !== []) $frames[] = ['!' . Contract::batch($this->high, $this->highWatched), count($this->high), true];
        if ($this->normal !== []) $frames[] = [Contract::batch($this->normal, $this->normalWatched), count($this->normal), false];
        if ($frames === []) return;
        $this->normal = $this->high = [];
        $this->normalWatched = $this->highWatched = false;
        try {
            $frames = $this->toAgent($frames);
            if ($frames !== []) $frames = $this->toGearman($frames);
        } catch (\Throwable $e) {
            $this->warnOnce('internal', 'OffLog: unexpected ' . get_class($e) . ': ' . $e->getMessage());
        }
        if ($frames === []) return;
        $lost = array_sum(array_column($frames, 1));
        $this->counts['dropped'] += $lost;
        self::$unreportedDropped += $lost;
        $this->outage('dropped', $lost, 'OffLog: neither the agent (' . ($this->agentSocket ?? 'disabled') . ') nor gearmand (' . $this->gearmanServers . ') took the events; dropping them (counted in stats()["dropped"]); logged once until one is back');
    }

    /**
     * logged = sent + fallback + dropped + buffered. sent: to the agent;
     * fallback: straight to gearmand; invalid: refused by the contract (not in logged).
     *
     * @return array{logged: int, sent: int, fallback: int, dropped: int, invalid: int, buffered: int}
     */
    public function stats(): array
    {
        return $this->counts + ['buffered' => count($this->normal) + count($this->high)];
    }

    /** @internal the shutdown function: finish the response first (PHP-FPM), then send. */
    public function shutdown(): void
    {
        if ($this->normal === [] && $this->high === []) return;
        if ($this->finishRequest && function_exists('fastcgi_finish_request')) fastcgi_finish_request();
        $this->flush();
    }

    // ── buffering ──

    private function add(mixed $userId, mixed $actionId, mixed $value, mixed $at, mixed $payload, bool $high, bool $watched): bool
    {
        try {
            $tuple = Contract::tuple(
                Contract::userId($userId),
                Contract::actionId($actionId),
                Contract::value($value),
                Contract::at($at, (int) (microtime(true) * 1000)),
                Contract::payload($payload),
                $watched,
            );
        } catch (InvalidEvent $e) {
            return $this->refuse($e);
        }
        return $this->buffer($tuple, $high, $watched);
    }

    private function buffer(string $tuple, bool $high, bool $watched): bool
    {
        ++$this->counts['logged'];
        if ($high) {
            $this->high[] = $tuple;
            $this->highWatched = $this->highWatched || $watched;
        } else {
            $this->normal[] = $tuple;
            $this->normalWatched = $this->normalWatched || $watched;
        }
        if (count($this->normal) + count($this->high) >= $this->maxBatchEvents) $this->flush();
        return true;
    }

    private function refuse(InvalidEvent $e): bool
    {
        ++$this->counts['invalid'];
        if (!isset(self::$invalidLogged[$e->field])) {
            self::$invalidLogged[$e->field] = true;
            ($this->logger)('OffLog: event refused: ' . $e->getMessage() . ' (further bad ' . $e->field . ' values are counted in stats()["invalid"], not logged)');
        }
        return false;
    }

    // ── the agent ──

    /**
     * Writes the frames without blocking; returns those the agent did not get.
     * A frame cut by a full socket is finished within agentWriteTimeoutMs or the
     * connection is closed, and the agent drops a frame cut mid-way: a frame
     * is counted by the agent whole or not at all, so it can go to gearmand.
     *
     * @param list<array{string, int, bool}> $frames
     * @return list<array{string, int, bool}>
     */
    private function toAgent(array $frames): array
    {
        if ($this->agentSocket === null) return $frames;
        $report = '';
        if (self::$unreportedFallback > 0 || self::$unreportedDropped > 0) {
            $report = 'report {"fallback":' . self::$unreportedFallback . ',"dropped":' . self::$unreportedDropped . "}\n";
        }
        $data = $report;
        $ends = [];
        foreach ($frames as $f) {
            $data .= $f[0] . "\n";
            $ends[] = strlen($data);
        }
        $written = false;
        for ($attempt = 0; $attempt < 2 && $written === false; $attempt++) {
            $sock = $this->agentStream();
            if ($sock === null) return $this->agentMissed($frames, 'unreachable');
            $written = @fwrite($sock, $data);
            // A persistent socket whose agent restarted: broken pipe. Reconnect once.
            if ($written === false) @fclose($sock);
        }
        if ($written === false) return $this->agentMissed($frames, 'not accepting writes');
        if ($written < strlen($data) && $written > 0) $written += $this->finishWrite($sock, substr($data, $written));
        $delivered = 0;
        foreach ($ends as $i => $end) {
            if ($written < $end) break;
            $delivered = $i + 1;
        }
        if ($written >= strlen($report)) self::$unreportedFallback = self::$unreportedDropped = 0;
        for ($i = 0; $i < $delivered; $i++) $this->counts['sent'] += $frames[$i][1];
        if ($delivered === count($frames)) {
            $this->recovered('agent');
            $this->recovered('dropped');
            return [];
        }
        // A frame cut mid-way: close, and the agent drops it (the frame goes to gearmand below).
        $boundary = $delivered > 0 ? $ends[$delivered - 1] : strlen($report);
        if ($written > 0 && $written !== $boundary) @fclose($sock);
        return $this->agentMissed(array_slice($frames, $delivered), 'full');
    }

    /** Finishes a cut frame, blocking at most agentWriteTimeoutMs; returns the bytes written. */
    private function finishWrite($sock, string $rest): int
    {
        $done = 0;
        $deadline = hrtime(true) + $this->agentWriteTimeoutMs * 1_000_000;
        stream_set_blocking($sock, true);
        stream_set_timeout($sock, 0, $this->agentWriteTimeoutMs * 1000);
        while ($done < strlen($rest) && hrtime(true) < $deadline) {
            $n = @fwrite($sock, $done === 0 ? $rest : substr($rest, $done));
            if ($n === false || $n === 0) break;
            $done += $n;
        }
        stream_set_blocking($sock, false);
        return $done;
    }

    /** @return resource|null */
    private function agentStream()
    {
        $flags = STREAM_CLIENT_CONNECT | STREAM_CLIENT_PERSISTENT;
        $sock = @stream_socket_client('unix://' . $this->agentSocket, $errno, $errstr, 0.05, $flags);
        if ($sock === false) return null;
        stream_set_blocking($sock, false);
        return $sock;
    }

    private function agentMissed(array $frames, string $why): array
    {
        $this->outage('agent', array_sum(array_column($frames, 1)), "OffLog: the agent at {$this->agentSocket} is $why; sending straight to gearmand (counted in stats()[\"fallback\"]); logged once until it is back");
        return $frames;
    }

    // ── gearmand ──

    /**
     * One offlog.batch job per frame (normal, and high for errors).
     *
     * @param list<array{string, int, bool}> $frames
     * @return list<array{string, int, bool}> the frames no server took
     */
    private function toGearman(array $frames): array
    {
        if ($this->gearmanServers === '') return $frames;
        if (!class_exists(\GearmanClient::class, false)) {
            $this->warnOnce('no-gearman', 'OffLog: ext-gearman is not loaded, so there is no direct path to gearmand when the agent is unavailable');
            return $frames;
        }
        $left = [];
        foreach ($frames as $f) {
            $body = $f[2] ? substr($f[0], 1) : $f[0];
            // One unique id per job, kept for the retry: if the first try reached gearmand after all,
            // gearmand merges the two while queued and the worker skips the second once applied.
            $unique = 'php-' . bin2hex(random_bytes(8));
            if ($this->submit($body, $unique, $f[2]) || $this->submit($body, $unique, $f[2], true)) {
                $this->counts['fallback'] += $f[1];
                self::$unreportedFallback += $f[1];
                $this->recovered('dropped');
            } else {
                $left[] = $f;
            }
        }
        return $left;
    }

    private function submit(string $body, string $unique, bool $high, bool $fresh = false): bool
    {
        $key = $this->gearmanServers;
        try {
            if ($fresh || !isset(self::$gearman[$key])) {
                unset(self::$gearman[$key]);
                $gc = new \GearmanClient();
                $gc->setTimeout($this->gearmanTimeoutMs);
                if (!@$gc->addServers($key)) return false;
                self::$gearman[$key] = $gc;
            }
            $gc = self::$gearman[$key];
            $high ? @$gc->doHighBackground(self::FN_BATCH, $body, $unique) : @$gc->doBackground(self::FN_BATCH, $body, $unique);
            return $gc->returnCode() === GEARMAN_SUCCESS;
        } catch (\GearmanException) {
            // ext-gearman throws when it cannot reach any server (“Failed to set exception option”).
            unset(self::$gearman[$key]);
            return false;
        }
    }

    // ── outages: logged once each ──

    /**
     * An outage is logged when it begins, and its end only if it lasted a
     * second or more: a socket full for a millisecond under load is counted
     * (stats()), not written to the error log every request. A new outage of
     * the same kind within OUTAGE_QUIET_S of the last message is not logged again.
     */
    private function outage(string $kind, int $events, string $message): void
    {
        $now = microtime(true);
        if (!isset(self::$outages[$kind])) {
            self::$outages[$kind] = ['since' => $now, 'events' => 0];
            if ($now - (self::$lastLogged[$kind] ?? -INF) >= self::OUTAGE_QUIET_S) {
                self::$lastLogged[$kind] = $now;
                ($this->logger)($message);
            }
        }
        self::$outages[$kind]['events'] += $events;
    }

    private function recovered(string $kind): void
    {
        if (!isset(self::$outages[$kind])) return;
        ['since' => $since, 'events' => $events] = self::$outages[$kind];
        unset(self::$outages[$kind]);
        $lasted = microtime(true) - $since;
        if ($lasted < 1.0) return;
        ($this->logger)(sprintf('OffLog: %s outage over after %.1f s (%d events were %s)', $kind, $lasted, $events, $kind === 'agent' ? 'sent straight to gearmand' : 'dropped'));
    }

    private function warnOnce(string $kind, string $message): void
    {
        $this->outage($kind, 0, $message);
    }

    private static function positive(array $options, string $key, int $default): int
    {
        $v = $options[$key] ?? $default;
        if (!is_int($v) || $v < 1) throw new \InvalidArgumentException("OffLog\\Client: $key must be a positive integer, got " . var_export($v, true));
        return $v;
    }
}
