"""Stacks: several services deployed, updated and removed together.

- `node.compose.stackfile`: shoal's own stack file (`services:` map of service specs)
  -> checked `ServiceSpec`s named `<stack>_<service>`; dependency cycles refused.
- `node.compose.translate`: a Compose file -> shoal's stack document, with one line per
  key shoal refuses or ignores.

Pure: imports no grpc, docker or etcd; reads no file itself (the caller passes a reader).
"""
