"""What runs only while this node holds leadership: election, the reconcile loop, the
scheduler (`scheduler`, `placement/`), fenced commits, rolling updates and automatic
rollback, liveness of nodes, pending reasons, and etcd upkeep."""
