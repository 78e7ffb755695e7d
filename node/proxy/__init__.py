"""The routing mesh: every node serves every published port and spreads it over the
routable replicas.

Pure parts: `routes` (which ports, which replicas), `balancer` (round-robin, passive
ejection, retries), `heads` (HTTP head rewriting), `limits` (bounds on hostile input).
Engines: `tcp` (L4) and `http` (L7, llhttp; `http_conn`, `http_upstream`,
`http_outcomes`). `mesh` keeps the listeners in step with etcd and gossip; `metrics`
and `stats` serve `/metrics`.
"""
