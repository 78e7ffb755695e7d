"""Security: the cluster CA, tokens, and the check that runs before every handler.

- `ca`: the cluster CA, node/wire/client/join certificates, CSRs, renewal timing.
- `tokens`: join tokens (`SHOAL-1-…`, pinning the CA), client tokens (`shoal_<id>_…`,
  stored hashed) and the role -> method table.
- `auth`: the grpc.aio interceptor (certificate kind + bearer token -> allowed or not).
- `bootstrap`: what `cluster init`, joining, renewal and `token create` compute (no I/O).
- `files`: where a node keeps its key and certificates, written 0600 atomically.
- `context`: the CLI's credentials (context file or environment).
- `cluster`: the security records in etcd (CA, join token, client tokens) and their writes.
- `credentials`: the daemon's `CredentialStore`, mirrors of etcd kept by a watch.
- `provision`: `shoal cluster init` and `shoal dev`'s set-up, where the CA is at hand.
- `join_uses`: each use of a join token, recorded in etcd (no replay, bounded count).
- `streams`: server streams bounded per token and ended with their token.
- `tls`: the TLS material of a server and a channel (`ServerTls`, `ClientTls`).
- `gossip_proof`: a node's ALIVE and LEFT gossip claims, signed with its key and checked.
- `etcd_pki`, `etcd_tls`: etcd's own CA and certificates; `EtcdTls` read from files.

`node.wire.rpc` makes the TLS channels and servers from these; `node.daemon.identity` keeps
a node's certificate (load, join, renew); `node.api.admin` and `node.api.join` answer
the admin and join calls. docs/security.md says what is protected, from whom.
"""
