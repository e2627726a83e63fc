"""The backup engine: a deduplicating, compressed, encrypted datastore.

Glossary
--------
store       A directory (or, later, a remote place) holding one datastore: `config`,
            `keys/`, `data/`, `index/`, `snapshots/`, `locks/`, `gc/`.
chunk       A piece of a file, cut where the content says (FastCDC, ~1 MiB) or, for disk
            images, every 1 MiB. Identical chunks are stored once.
chunk id    Keyed BLAKE3 of a chunk's plaintext: equal content, equal id, and nobody
            without the key can compute it.
blob        A chunk or a tree, compressed with zstd when that helps, then sealed with
            AES-256-GCM (associated data: its id).
tree        One directory: its entries with their metadata, as a blob.
pack        A file of many blobs plus a sealed header listing them; named by the SHA-256
            of its bytes, like every immutable object, so anyone can check it.
index       Objects that say which pack holds which blob; cached locally in SQLite.
snapshot    One backup: time, host, paths, tags, and its root tree.
session     A record in `locks/` that a process is using the store (see locks.py).
gc          Frees packs no snapshot needs, in two phases that let backups run meanwhile.
copy        Another store with the same config and objects, made by sync without the key
            (objects cross sealed, checked against their names); copies repair one
            another object by object.
scrub       Checks every object against its name, without the key.

This package imports nothing from the rest of isidorus but `isidorus.errors`.
"""
