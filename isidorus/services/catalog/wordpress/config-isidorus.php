<?php
/*
 * WordPress for isidorus: its posts in the host's MariaDB, which lets the service's user
 * in by its Unix identity over the local socket. Written by isidorus at each install and
 * upgrade: edits are lost.
 */
define('DB_NAME', 'wordpress');
define('DB_USER', {{ user | php }});
define('DB_PASSWORD', '');
define('DB_HOST', {{ ("localhost:" ~ mysql_socket) | php }});
define('DB_CHARSET', 'utf8mb4');
define('AUTH_KEY', {{ secret("auth_key") | php }});
define('SECURE_AUTH_KEY', {{ secret("secure_auth_key") | php }});
define('LOGGED_IN_KEY', {{ secret("logged_in_key") | php }});
define('NONCE_KEY', {{ secret("nonce_key") | php }});
define('AUTH_SALT', {{ secret("auth_salt") | php }});
define('SECURE_AUTH_SALT', {{ secret("secure_auth_salt") | php }});
define('LOGGED_IN_SALT', {{ secret("logged_in_salt") | php }});
define('NONCE_SALT', {{ secret("nonce_salt") | php }});
// updates come from Debian's packages (isidorus update), not from wordpress.org
define('AUTOMATIC_UPDATER_DISABLED', true);
define('DISALLOW_FILE_MODS', true);
