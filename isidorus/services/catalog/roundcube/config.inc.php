<?php
/*
 * Roundcube for isidorus: members sign in with their mailbox's address and password,
 * which the host's mail server (IMAP on this machine, by default) checks. Written by
 * isidorus at each install and upgrade: edits are lost.
 */
$config = [];
// a file of its own, made with its tables at the first page
$config['db_dsnw'] = {{ ("sqlite:///" ~ data_dir ~ "/roundcube.db?mode=0640") | php }};
$config['imap_host'] = ['localhost:143'];
$config['smtp_host'] = 'localhost:587';
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
$config['des_key'] = {{ secret("des_key")[:24] | php }};
$config['temp_dir'] = {{ (data_dir ~ "/temp/") | php }};
$config['log_dir'] = {{ (data_dir ~ "/logs/") | php }};
$config['product_name'] = {{ ("Webmail of " ~ domain) | php }};
$config['skin'] = 'elastic';
$config['plugins'] = [];
$config['enable_installer'] = false;
$config['use_https'] = false;  // nginx, in front, has the TLS
$config['enable_spellcheck'] = false;  // it would send the text to another host
