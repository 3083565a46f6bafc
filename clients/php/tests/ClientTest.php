<?php

declare(strict_types=1);

namespace OffLog\Tests;

use OffLog\Client;
use PHPUnit\Framework\TestCase;

/**
 * OffLog\Client against real sockets: an agent stand-in (a unix socket this
 * test owns, so it can refuse to read) and, where a test needs one, the
 * gearmand named by OFFLOG_TEST_GEARMAN (test/php.test.ts starts one for it).
 */
final class ClientTest extends TestCase
{
    private const AT = 1767225600000;
    /** @var list<string> */
    private array $lines = [];
    private string $dir;

    protected function setUp(): void
    {
        $this->dir = sys_get_temp_dir() . '/offlog-php-' . bin2hex(random_bytes(4));
        mkdir($this->dir);
        $this->lines = [];
        // Outages are remembered per process (as in a PHP-FPM worker): each test starts with none.
        foreach (['outages', 'lastLogged', 'invalidLogged'] as $p) (new \ReflectionProperty(Client::class, $p))->setValue(null, []);
    }

    protected function tearDown(): void
    {
        foreach (glob($this->dir . '/*') ?: [] as $f) @unlink($f);
        @rmdir($this->dir);
    }

    private function client(array $options): Client
    {
        return new Client($options + ['flushAtShutdown' => false, 'logger' => function (string $line): void {
            $this->lines[] = $line;
        }]);
    }

    private static function gearman(): string
    {
        $g = getenv('OFFLOG_TEST_GEARMAN');
        if ($g === false || $g === '') self::markTestSkipped('OFFLOG_TEST_GEARMAN is not set (test/php.test.ts sets it)');
        return $g;
    }

    /** @return array{resource, string} a listening agent stand-in and its path */
    private function listener(string $name = 'agent.sock'): array
    {
        $path = $this->dir . '/' . $name;
        $server = stream_socket_server('unix://' . $path, $errno, $errstr);
        $this->assertNotFalse($server, $errstr);
        return [$server, $path];
    }

    /** Every whole frame the stand-in received. @return list<string> */
    private static function readFrames($conn): array
    {
        stream_set_blocking($conn, false);
        $data = '';
        while (($chunk = fread($conn, 65536)) !== false && $chunk !== '') $data .= $chunk;
        $frames = explode("\n", $data);
        array_pop($frames); // after the last newline: a cut frame, or nothing
        return $frames;
    }

    private static function eventsIn(array $frames): int
    {
        $n = 0;
        foreach ($frames as $f) {
            if ($f[0] === '{' || $f[0] === '!') $n += count(json_decode(ltrim($f, '!'), true, 512, JSON_THROW_ON_ERROR)['e']);
        }
        return $n;
    }

    public function testFramesAsTheAgentReadsThem(): void
    {
        [$server, $path] = $this->listener();
        $c = $this->client(['agentSocket' => $path, 'gearmanServers' => '']);
        $this->assertTrue($c->log(42, 3, 2, self::AT));
        $this->assertTrue($c->log('18446744073709551615', 3, 1, '2026-01-01T00:00:00Z'));
        $this->assertTrue($c->logError(7, 9, 1, self::AT, 'boom'));
        $this->assertTrue($c->logWatched(7, 1, 'pay', 1, self::AT));
        $this->assertTrue($c->logSimple('{"userid": 5, "actionId": 3}'));
        $c->flush();
        $conn = stream_socket_accept($server, 1);
        // A fallback earlier in this process is reported first: not this test's business.
        $frames = array_values(array_filter(self::readFrames($conn), fn ($f) => !str_starts_with($f, 'report ')));
        $this->assertSame('!{"v":1,"e":[[7,9,1,' . self::AT . ',"boom"]]}', $frames[0]);
        $this->assertMatchesRegularExpression('/^\{"v":2,"e":\[\[42,3,2,' . self::AT . '\],\["18446744073709551615",3,1,' . self::AT . '\],\[7,1,1,' . self::AT . ',"pay",1\],\[5,3,0,\d{13}\]\]\}$/', $frames[1]);
        $this->assertCount(2, $frames);
        $this->assertSame(['logged' => 5, 'sent' => 5, 'fallback' => 0, 'dropped' => 0, 'invalid' => 0, 'buffered' => 0], $c->stats());
    }

    public function testNothingReachableDropsExactlyLogsOnceAndReturnsAtOnce(): void
    {
        $c = $this->client(['agentSocket' => $this->dir . '/none.sock', 'gearmanServers' => '127.0.0.1:1']);
        $slowest = 0;
        for ($r = 0; $r < 20; $r++) {
            for ($i = 0; $i < 3; $i++) {
                $t = hrtime(true);
                $c->log($r, 1 + $i);
                $slowest = max($slowest, hrtime(true) - $t);
            }
            $t = hrtime(true);
            $c->flush();
            $slowest = max($slowest, hrtime(true) - $t);
        }
        $this->assertSame(['logged' => 60, 'sent' => 0, 'fallback' => 0, 'dropped' => 60, 'invalid' => 0, 'buffered' => 0], $c->stats());
        $this->assertLessThan(50_000_000, $slowest, 'log() and flush() return at once with nothing reachable');
        $drops = array_filter($this->lines, fn ($l) => str_contains($l, 'dropping'));
        $this->assertCount(1, $drops, implode("\n", $this->lines));
    }

    public function testBadEventsAreRefusedCountedNeverThrown(): void
    {
        $c = $this->client(['agentSocket' => null, 'gearmanServers' => '']);
        $this->assertFalse($c->log(-1, 1));
        $this->assertFalse($c->log(1, 0));
        $this->assertFalse($c->log(1, 1, -5));
        $this->assertFalse($c->log(1, 1, 1, 'yesterday'));
        $this->assertFalse($c->log(1, 1, 1, null, str_repeat('x', 4097)));
        $this->assertFalse($c->log([], new \stdClass()));
        $this->assertFalse($c->log(NAN, 1));
        $this->assertFalse($c->logSimple('{"userid": 1, "actionId": 1, "value": 3}'));
        $this->assertFalse($c->logSimple('not json'));
        $this->assertTrue($c->log(1, 1, 1, new \DateTimeImmutable('@1767225600')));
        $this->assertSame(9, $c->stats()['invalid']);
        $this->assertSame(1, $c->stats()['buffered']);
        $this->assertStringContainsString('userId: must be an unsigned 64-bit integer', $this->lines[0]);
        $this->assertStringContainsString('logSimple."value"', implode("\n", $this->lines));
    }

    public function testUnknownOptionIsAConfigurationError(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        new Client(['agentSocet' => '/x']);
    }

    /**
     * The stand-in accepts and never reads: the socket fills, a frame is cut,
     * the client closes rather than leave half a frame, and the rest goes to
     * gearmand. What the stand-in holds in whole frames is exactly `sent`.
     */
    public function testAFullAgentSocketFallsBackToGearmandAndLosesNothing(): void
    {
        $gearman = self::gearman();
        [$server, $path] = $this->listener();
        $c = $this->client(['agentSocket' => $path, 'gearmanServers' => $gearman, 'agentWriteTimeoutMs' => 5]);
        $payload = str_repeat('p', 1000);
        $conns = [];
        for ($r = 0; $r < 400; $r++) {
            for ($i = 0; $i < 10; $i++) $c->logWatched($r, 1 + $i, $payload, 1, self::AT);
            $c->flush();
            // The client reconnects after closing a cut frame's connection: accept without reading.
            while (($a = @stream_socket_accept($server, 0)) !== false) $conns[] = $a;
        }
        $s = $c->stats();
        $this->assertSame(4000, $s['logged']);
        $this->assertSame(0, $s['dropped']);
        $this->assertGreaterThan(0, $s['fallback'], 'the full socket pushed back');
        $this->assertGreaterThan(0, $s['sent']);
        $this->assertSame(4000, $s['sent'] + $s['fallback']);
        $received = 0;
        foreach ($conns as $conn) $received += self::eventsIn(self::readFrames($conn));
        $this->assertSame($s['sent'], $received, 'whole frames at the agent = sent, not one more, not one less');
        $this->assertCount(1, array_filter($this->lines, fn ($l) => str_contains($l, 'is full')), implode("\n", $this->lines));
    }

    public function testAnAgentGoneFallsBackAndTheNextAgentIsToldHowMany(): void
    {
        $gearman = self::gearman();
        $c = $this->client(['agentSocket' => $this->dir . '/later.sock', 'gearmanServers' => $gearman]);
        $c->log(1, 1, 1, self::AT);
        $c->log(2, 1, 1, self::AT);
        $c->flush();
        $this->assertSame(2, $c->stats()['fallback']);
        [$server] = $this->listener('later.sock');
        $c->log(3, 1, 1, self::AT);
        $c->flush();
        $frames = self::readFrames(stream_socket_accept($server, 1));
        $this->assertMatchesRegularExpression('/^report \{"fallback":\d+,"dropped":\d+\}$/', $frames[0]);
        $this->assertGreaterThanOrEqual(2, json_decode(substr($frames[0], 7), true)['fallback']);
        $this->assertSame('{"v":1,"e":[[3,1,1,' . self::AT . ']]}', $frames[1]);
        $this->assertSame(1, $c->stats()['sent']);
    }
}
