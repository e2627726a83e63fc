<?php
/*
 * DokuWiki for isidorus: members sign in with the host's password, checked against its
 * LDAP directory; the directory's groups are DokuWiki's groups. Written by isidorus at
 * each install and upgrade: edits are lost.
 */
$conf['useacl'] = 1;
$conf['authtype'] = 'authldap';
$conf['plugin']['authldap']['server'] = {{ ldap.host | php }};
$conf['plugin']['authldap']['port'] = {{ ldap.port }};
$conf['plugin']['authldap']['version'] = 3;
$conf['plugin']['authldap']['usertree'] = {{ ldap.people_dn | php }};
$conf['plugin']['authldap']['userfilter'] = '(&(uid=%{user})(objectClass=inetOrgPerson))';
$conf['plugin']['authldap']['userscope'] = 'one';
$conf['plugin']['authldap']['grouptree'] = {{ ldap.groups_dn | php }};
$conf['plugin']['authldap']['groupfilter'] = '(&(objectClass=groupOfNames)(member=%{dn}))';
$conf['plugin']['authldap']['groupkey'] = 'cn';
$conf['plugin']['authldap']['userkey'] = 'uid';
$conf['plugin']['authldap']['binddn'] = {{ ldap.bind_dn | php }};
$conf['plugin']['authldap']['bindpw'] = {{ ldap.bind_password | php }};
