<?php

declare(strict_types=1);

// For hosts without Composer: `require 'clients/php/autoload.php';` loads OffLog\* from src/ (PSR-4).
spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'OffLog\\', 7) !== 0) return;
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 7)) . '.php';
    if (is_file($file)) require $file;
});
