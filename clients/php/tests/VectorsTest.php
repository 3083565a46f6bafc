<?php

declare(strict_types=1);

namespace OffLog\Tests;

use OffLog\Contract;
use OffLog\InvalidEvent;
use PHPUnit\Framework\TestCase;

/** The shared vectors (test/vectors/contract.json), which test/vectors.test.ts runs against contract.ts. */
final class VectorsTest extends TestCase
{
    private const ACCEPTED = 1700000000123;

    private static function vectors(): object
    {
        $json = file_get_contents(__DIR__ . '/../../../test/vectors/contract.json');
        // Objects stay objects, so {} and [] stay apart, as JSON.parse keeps them.
        return json_decode($json, false, 512, JSON_THROW_ON_ERROR);
    }

    public static function valid(): iterable
    {
        foreach (self::vectors()->valid as $v) yield $v->name => [$v->event, $v->expect];
    }

    public static function invalid(): iterable
    {
        foreach (self::vectors()->invalid as $v) yield $v->name => [$v->event, $v->field];
    }

    public static function tuples(): iterable
    {
        foreach (self::vectors()->tuples as $i => $v) yield "tuple $i" => [$v->event, $v->watched, $v->tuple];
    }

    /** @dataProvider valid */
    public function testValid(mixed $event, object $expect): void
    {
        $want = get_object_vars($expect);
        if ($want['at'] === 'accepted') $want['at'] = self::ACCEPTED;
        $this->assertSame($want, Contract::event($event, self::ACCEPTED));
    }

    /** @dataProvider invalid */
    public function testInvalidNamesTheField(mixed $event, string $field): void
    {
        try {
            Contract::event($event, self::ACCEPTED);
            $this->fail('accepted ' . json_encode($event));
        } catch (InvalidEvent $e) {
            $this->assertSame($field, $e->field, $e->getMessage());
        }
    }

    /** @dataProvider tuples */
    public function testTupleAsEncodeTupleWritesIt(object $e, bool $watched, string $tuple): void
    {
        $this->assertSame($tuple, Contract::tuple($e->userId, $e->actionId, $e->value, $e->at, $e->payload ?? null, $watched));
    }

    public function testTheFileHasEveryKind(): void
    {
        $v = self::vectors();
        $this->assertGreaterThanOrEqual(20, count($v->valid));
        $this->assertGreaterThanOrEqual(40, count($v->invalid));
    }

    public function testPayloadMustBeUtf8(): void
    {
        $this->expectExceptionObject(new InvalidEvent('payload', 'must be valid UTF-8'));
        Contract::payload("\xff\xfe");
    }
}
