-- Prosody for isidorus: accounts are the host's members, checked against its LDAP
-- directory; web clients come through nginx (BOSH, websockets). Written by isidorus at
-- each install and upgrade: edits are lost.
pidfile = {{ (data_dir ~ "/prosody.pid") | lua }}
data_path = {{ data_dir | lua }}
log = { info = "*console" }  -- the process manager keeps it
certificates = {{ (data_dir ~ "/certs") | lua }}

modules_enabled = {
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "carbons"; "pep"; "private";
    "blocklist"; "vcard4"; "vcard_legacy"; "version"; "uptime"; "time"; "ping";
    "mam"; "smacks"; "csi_simple"; "bosh"; "websocket";
}
allow_registration = false  -- accounts come from isidorus
c2s_require_encryption = true
s2s_secure_auth = false

authentication = "ldap"
ldap_server = {{ (ldap.host ~ ":" ~ ldap.port) | lua }}
ldap_rootdn = {{ ldap.bind_dn | lua }}
ldap_password = {{ ldap.bind_password | lua }}
ldap_base = {{ ldap.people_dn | lua }}
ldap_scope = "onelevel"
ldap_filter = "(&(uid=$user)(objectClass=inetOrgPerson))"

-- the web side listens on loopback only; nginx, in front, has the TLS
http_ports = { {{ port }} }
http_interfaces = { "127.0.0.1" }
https_ports = { }
consider_bosh_secure = true
consider_websocket_secure = true
http_external_url = {{ ("https://" ~ domain ~ "/") | lua }}

VirtualHost {{ domain | lua }}
Component {{ ("rooms." ~ domain) | lua }} "muc"
