<?php

declare(strict_types=1);

namespace OffLog;

/**
 * The event rules of lib/domain/contract.ts, in PHP. The shared vectors
 * (test/vectors/contract.json) are run against both, so a change to one
 * without the other fails a test. One PHP-only rule: a payload must be valid
 * UTF-8 (a JavaScript string always is).
 */
final class Contract
{
    public const MAX_SAFE = 9007199254740991;
    public const MAX_U64 = '18446744073709551615';
    public const MAX_PAYLOAD_BYTES = 4096;
    /** 3000-01-01T00:00:00Z: timestamps past it are typos, not clock skew. */
    public const MAX_AT_MS = 32503680000000;
    private const ISO_8601 = '/^(\d{4})-(\d{2})-(\d{2})(T(\d{2}):(\d{2})(:(\d{2})(\.(\d{1,9}))?)?(Z|([+-])(\d{2}):?(\d{2})))?$/D';
    private const FIELDS = ['userId' => true, 'actionId' => true, 'value' => true, 'at' => true, 'payload' => true];

    /** Marks a field that is absent (as opposed to null). */
    public const ABSENT = "\0absent";

    /** @return string the canonical decimal form */
    public static function userId(mixed $raw, string $field = 'userId'): string
    {
        if (is_int($raw)) {
            if ($raw >= 0 && $raw <= self::MAX_SAFE) return (string) $raw;
            if ($raw > 0) throw self::tooBigForJson($field);
        } elseif (is_float($raw)) {
            if (is_finite($raw) && floor($raw) === $raw && $raw >= 0) {
                if ($raw <= self::MAX_SAFE) return (string) (int) $raw;
                throw self::tooBigForJson($field);
            }
        } elseif (is_string($raw)) {
            if ($raw === self::ABSENT) throw new InvalidEvent($field, 'is required');
            if (preg_match('/^\d{1,20}$/D', $raw) === 1) {
                $canonical = ltrim($raw, '0');
                if ($canonical === '') $canonical = '0';
                if (strlen($canonical) < 20 || strcmp($canonical, self::MAX_U64) <= 0) return $canonical;
            }
        }
        throw new InvalidEvent($field, 'must be an unsigned 64-bit integer (number or decimal string), got ' . self::excerpt($raw));
    }

    public static function actionId(mixed $raw, string $field = 'actionId'): int
    {
        $n = is_string($raw) && preg_match('/^\d{1,5}$/D', $raw) === 1 ? (int) $raw : $raw;
        if (is_float($n) && is_finite($n) && floor($n) === $n && $n >= 1 && $n <= 65535) $n = (int) $n;
        if (is_int($n) && $n >= 1 && $n <= 65535) return $n;
        if ($raw === self::ABSENT) throw new InvalidEvent($field, 'is required');
        throw new InvalidEvent($field, 'must be an integer from 1 to 65535, got ' . self::excerpt($raw));
    }

    public static function value(mixed $raw, string $field = 'value'): int
    {
        if ($raw === null || $raw === self::ABSENT) return 0;
        if (is_int($raw) && $raw >= 0 && $raw <= self::MAX_SAFE) return $raw;
        if (is_float($raw) && is_finite($raw) && floor($raw) === $raw && $raw >= 0 && $raw <= self::MAX_SAFE) return (int) $raw;
        throw new InvalidEvent($field, 'must be an integer from 0 to 2^53-1, got ' . self::excerpt($raw));
    }

    /** Epoch milliseconds (a fractional number is floored); $acceptedAt when absent. */
    public static function at(mixed $raw, int $acceptedAt, string $field = 'at'): int
    {
        if ($raw === null || $raw === self::ABSENT) return $acceptedAt;
        if ((is_int($raw) || is_float($raw)) && is_finite((float) $raw) && $raw >= 0 && $raw < self::MAX_AT_MS) return (int) floor($raw);
        if ($raw instanceof \DateTimeInterface) {
            $ms = (int) $raw->format('U') * 1000 + intdiv((int) $raw->format('u'), 1000);
            if ($ms >= 0 && $ms < self::MAX_AT_MS) return $ms;
        }
        if (is_string($raw) && preg_match(self::ISO_8601, $raw, $m) === 1) {
            $ms = self::isoMs($m);
            if ($ms !== null && $ms >= 0 && $ms < self::MAX_AT_MS) return $ms;
        }
        throw new InvalidEvent($field, 'must be epoch milliseconds or an ISO-8601 date-time between 1970 and 3000, got ' . self::excerpt($raw));
    }

    /** @return string|null the payload, null when there is none */
    public static function payload(mixed $raw, string $field = 'payload'): ?string
    {
        if ($raw === null || $raw === self::ABSENT) return null;
        if (!is_string($raw)) throw new InvalidEvent($field, 'must be a string, got ' . self::excerpt($raw));
        if (strlen($raw) > self::MAX_PAYLOAD_BYTES) {
            throw new InvalidEvent($field, 'must be at most ' . self::MAX_PAYLOAD_BYTES . ' bytes of UTF-8, got ' . strlen($raw));
        }
        if (preg_match('//u', $raw) !== 1) throw new InvalidEvent($field, 'must be valid UTF-8');
        return $raw;
    }

    /**
     * One event object (a decoded JSON object or an associative array), as
     * parseEvent reads it.
     *
     * @return array{userId: string, actionId: int, value: int, at: int, payload?: string}
     */
    public static function event(mixed $raw, int $acceptedAt): array
    {
        if ($raw instanceof \stdClass) $raw = get_object_vars($raw);
        if (!is_array($raw) || ($raw !== [] && array_is_list($raw))) {
            throw new InvalidEvent('event', 'must be a JSON object, got ' . self::excerpt($raw));
        }
        foreach ($raw as $key => $_) {
            if (!isset(self::FIELDS[$key])) {
                throw new InvalidEvent(self::excerpt((string) $key, 40), 'is not a known field (userId, actionId, value, at, payload)');
            }
        }
        $get = static fn (string $k): mixed => array_key_exists($k, $raw) ? $raw[$k] : self::ABSENT;
        $event = [
            'userId' => self::userId($get('userId')),
            'actionId' => self::actionId($get('actionId')),
            'value' => self::value($get('value')),
            'at' => self::at($get('at'), $acceptedAt),
        ];
        $payload = self::payload($get('payload'));
        if ($payload !== null) $event['payload'] = $payload;
        return $event;
    }

    /** One `offlog.batch` tuple, byte for byte as encodeTuple writes it. */
    public static function tuple(string $userId, int $actionId, int $value, int $at, ?string $payload, bool $watched = false): string
    {
        $u = strlen($userId) < 16 ? $userId : '"' . $userId . '"';
        if ($watched) return "[$u,$actionId,$value,$at," . ($payload === null ? 'null' : self::json($payload)) . ',1]';
        return $payload === null ? "[$u,$actionId,$value,$at]" : "[$u,$actionId,$value,$at," . self::json($payload) . ']';
    }

    /** `offlog.batch`: version 1, or 2 when a tuple carries the watched flag. */
    public static function batch(array $tuples, bool $watched): string
    {
        return '{"v":' . ($watched ? 2 : 1) . ',"e":[' . implode(',', $tuples) . ']}';
    }

    /** A JSON string as JSON.stringify writes it. */
    public static function json(string $s): string
    {
        return json_encode($s, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_LINE_TERMINATORS | JSON_THROW_ON_ERROR);
    }

    /** A short, safe rendering of bad input for a message. */
    public static function excerpt(mixed $value, int $max = 80): string
    {
        if ($value === self::ABSENT) return 'undefined';
        $s = json_encode($value, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PARTIAL_OUTPUT_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
        if (!is_string($s)) $s = '[' . get_debug_type($value) . ']';
        // Cut by characters, not bytes (no mbstring needed): a cut must not split a UTF-8 sequence.
        return preg_match('/^.{' . ($max + 1) . '}/su', $s) === 1 ? preg_replace('/^(.{' . $max . '}).*$/su', '$1', $s) . '…' : $s;
    }

    private static function tooBigForJson(string $field): InvalidEvent
    {
        return new InvalidEvent($field, 'is above 2^53-1 and lost precision as a JSON number; send it as a decimal string');
    }

    /** Date.parse's reading of a string ISO_8601 matched, or null where Date.parse gives NaN or the date does not exist. */
    private static function isoMs(array $m): ?int
    {
        [$year, $month, $day] = [(int) $m[1], (int) $m[2], (int) $m[3]];
        if ($month < 1 || $month > 12 || $day < 1 || !checkdate($month, $day, max($year, 1))) return null;
        $ms = self::daysFromCivil($year, $month, $day) * 86400000;
        if (($m[4] ?? '') === '') return $ms;
        [$h, $i, $s] = [(int) $m[5], (int) $m[6], (int) ($m[8] ?? 0)];
        $frac = isset($m[10]) ? (int) substr(str_pad($m[10], 3, '0'), 0, 3) : 0;
        if ($i > 59 || $s > 59 || $h > 24 || ($h === 24 && ($i !== 0 || $s !== 0 || $frac !== 0))) return null;
        $ms += (($h * 60 + $i) * 60 + $s) * 1000 + $frac;
        if ($m[11] !== 'Z') {
            [$oh, $om] = [(int) $m[13], (int) $m[14]];
            if ($oh > 23 || $om > 59) return null;
            $offset = ($oh * 60 + $om) * 60000;
            $ms += $m[12] === '+' ? -$offset : $offset;
        }
        return $ms;
    }

    /** Days since 1970-01-01 of a proleptic Gregorian date. */
    private static function daysFromCivil(int $y, int $m, int $d): int
    {
        $y -= $m <= 2 ? 1 : 0;
        $era = intdiv($y >= 0 ? $y : $y - 399, 400);
        $yoe = $y - $era * 400;
        $doy = intdiv(153 * ($m + ($m > 2 ? -3 : 9)) + 2, 5) + $d - 1;
        $doe = $yoe * 365 + intdiv($yoe, 4) - intdiv($yoe, 100) + $doy;
        return $era * 146097 + $doe - 719468;
    }
}
