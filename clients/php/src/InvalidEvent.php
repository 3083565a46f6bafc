<?php

declare(strict_types=1);

namespace OffLog;

/** An event that breaks the contract; `field` names what was wrong, as lib/domain/contract.ts does. */
final class InvalidEvent extends \InvalidArgumentException
{
    public function __construct(public readonly string $field, public readonly string $rule)
    {
        parent::__construct("$field: $rule");
    }
}
