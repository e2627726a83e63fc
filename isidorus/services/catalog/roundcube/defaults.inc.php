<?php
// Roundcube's own defaults, as Debian ships them; config.inc.php, beside, has isidorus's.
include '/etc/roundcube/defaults.inc.php';
